package spec

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"gopkg.in/yaml.v3"
)

func readExample(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "examples", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestExampleShop(t *testing.T) {
	apps, err := DecodeApps("examples/shop.yaml", readExample(t, "shop.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(apps) != 1 || apps[0].Name != "shop" {
		t.Fatalf("got %+v", apps)
	}
	a := apps[0]
	tasks := map[string]int{}
	for _, c := range a.Classes {
		tasks[c.Name] = c.Tasks
		if c.Guest.Runtime != RuntimeNetns || c.Guest.Command[0] != SelfProgram || c.Guest.Command[1] != "sample" || c.Guest.Command[2] != c.Name {
			t.Errorf("class %s runs %v in %s", c.Name, c.Guest.Command, c.Guest.Runtime)
		}
		if c.Resources.CPU < 100 || c.Resources.CPU > 250 || c.Resources.Memory < 64<<20 || c.Resources.Memory > 128<<20 {
			t.Errorf("class %s reserves %s CPU, %s", c.Name, c.Resources.CPU, c.Resources.Memory)
		}
	}
	if !reflect.DeepEqual(tasks, map[string]int{"web": 2, "app": 2, "db": 1}) {
		t.Errorf("tasks %v", tasks)
	}
	want := []Rule{
		{From: "web", To: "app", Ports: []int{8080}, Protocol: ProtoTCP, Encrypt: false},
		{From: "app", To: "db", Ports: []int{5432}, Protocol: ProtoTCP, Encrypt: true},
	}
	if !reflect.DeepEqual(a.Rules, want) {
		t.Errorf("rules %+v, want %+v", a.Rules, want)
	}
}

func TestExampleServers(t *testing.T) {
	servers, err := DecodeServers("examples/servers.yaml", readExample(t, "servers.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(servers) != 3 {
		t.Fatalf("got %d servers", len(servers))
	}
	for i, s := range servers {
		name := "s" + string(rune('1'+i))
		addr := "198.18.0.1" + string(rune('1'+i))
		zone := string(rune('a' + i))
		if s.Name != name || s.Address != addr || s.Labels["zone"] != zone {
			t.Errorf("server %d: %+v", i, s)
		}
		if s.Capacity.CPU != 4000 || s.Capacity.Memory != 8<<30 || s.PublicKey == "" {
			t.Errorf("server %s: %+v", s.Name, s)
		}
	}
}

// A decoded app written back as YAML (canonical quantities) or JSON (plain
// integers) reads back to the same value.
func TestAppRoundTrip(t *testing.T) {
	for _, src := range [][]byte{readExample(t, "shop.yaml"), []byte(baseApp)} {
		apps, err := DecodeApps("in.yaml", src)
		if err != nil {
			t.Fatal(err)
		}
		out, err := yaml.Marshal(&apps[0])
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeApps("out.yaml", out)
		if err != nil {
			t.Fatalf("re-decoding %s: %v", out, err)
		}
		if !reflect.DeepEqual(back[0], apps[0]) {
			t.Errorf("YAML round trip changed the app:\n%+v\n%+v", apps[0], back[0])
		}

		js, err := json.Marshal(apps[0])
		if err != nil {
			t.Fatal(err)
		}
		var fromJSON App
		if err := json.Unmarshal(js, &fromJSON); err != nil {
			t.Fatal(err)
		}
		if errs := ValidateApp(&fromJSON); errs != nil {
			t.Errorf("app from JSON: %v", errs)
		}
		if !reflect.DeepEqual(fromJSON, apps[0]) {
			t.Errorf("JSON round trip changed the app:\n%+v\n%+v", apps[0], fromJSON)
		}
	}
}

func TestServersRoundTrip(t *testing.T) {
	servers, err := DecodeServers("in.yaml", readExample(t, "servers.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := yaml.Marshal(ServerList{APIVersion: APIVersion, Kind: KindServers, Servers: servers})
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeServers("out.yaml", out)
	if err != nil {
		t.Fatalf("re-decoding %s: %v", out, err)
	}
	if !reflect.DeepEqual(back, servers) {
		t.Errorf("round trip changed the servers:\n%+v\n%+v", servers, back)
	}
}

func TestEnvNames(t *testing.T) {
	if got := PeersEnvName("api-gw"); got != "CORRIDOR_PEERS_API_GW" {
		t.Errorf("PeersEnvName = %q", got)
	}
	if got := TaskID("shop", "web", 1); got != "shop/web/1" {
		t.Errorf("TaskID = %q", got)
	}
}

// TestEveryExampleDecodes: every app example is valid, so that the README's
// `corridor apply -f examples/...` lines work.
func TestEveryExampleDecodes(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "examples", "*.yaml"))
	if err != nil || len(files) < 3 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		if name == "servers.yaml" {
			continue
		}
		apps, err := DecodeApps("examples/"+name, readExample(t, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if len(apps) == 0 {
			t.Errorf("%s holds no app", name)
		}
	}
}
