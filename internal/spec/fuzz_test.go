package spec

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"gopkg.in/yaml.v3"
)

// fuzzSeeds are inputs the fuzzers start from, beside the files under
// testdata/fuzz: valid specs, and the shapes of input that once mattered.
var fuzzSeeds = []string{
	"",
	"---\n",
	"kind: App\n",
	"a: &a [x, x]\nb: [*a, *a]\n",
	"apiVersion: corridor/v1\nkind: App\nname: x\nclasses: [{name: a, tasks: 1, guest: {runtime: netns, command: [a]}, resources: {cpu: 1, memory: 4Mi}}]\n",
	"apiVersion: corridor/v1\nkind: ServerList\nservers: [{name: s1, address: 198.18.0.1, capacity: {cpu: 1, memory: 1Gi}}]\n",
	"kind: App\nclasses: [\n",
	"kind: App\nname: !tag x\n",
	"kind: App\nnetwork: 100.64.1.5/30\nrules: [{from: a, to: a, ports: [1, 1, 0]}]\n",
}

func addSeeds(f *testing.F, examples ...string) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte(baseApp))
	f.Add([]byte(baseServers))
	for _, name := range examples {
		data, err := os.ReadFile(filepath.Join("..", "..", "examples", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
}

// checkErrorList asserts what every failed decode returns: a non-empty
// ErrorList whose entries name the file.
func checkErrorList(t *testing.T, err error) {
	list, ok := AsErrorList(err)
	if !ok || len(list) == 0 {
		t.Fatalf("error %v (%T) is not a non-empty ErrorList", err, err)
	}
	for _, e := range list {
		if e.File != "fuzz.yaml" || e.Msg == "" {
			t.Fatalf("error without file or message: %+v", e)
		}
	}
}

// FuzzDecodeApps: nothing panics; what decodes is valid and survives a
// round trip through YAML.
func FuzzDecodeApps(f *testing.F) {
	addSeeds(f, "shop.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		apps, err := DecodeApps("fuzz.yaml", data)
		if err != nil {
			checkErrorList(t, err)
			return
		}
		if len(apps) == 0 {
			t.Fatal("no apps and no error")
		}
		if errs := ValidateApps(apps); errs != nil {
			t.Fatalf("decoded apps fail ValidateApps: %v", errs)
		}
		for i := range apps {
			if errs := ValidateApp(&apps[i]); errs != nil {
				t.Fatalf("decoded app fails ValidateApp: %v", errs)
			}
			out, err := yaml.Marshal(&apps[i])
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			back, err := DecodeApps("fuzz.yaml", out)
			if err != nil {
				t.Fatalf("re-decoding %q: %v", out, err)
			}
			if !reflect.DeepEqual(back[0], apps[i]) {
				t.Fatalf("round trip changed the app:\n%#v\n%#v", apps[i], back[0])
			}
		}
	})
}

// FuzzDecodeServers: nothing panics; what decodes is valid and survives a
// round trip through YAML.
func FuzzDecodeServers(f *testing.F) {
	addSeeds(f, "servers.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		servers, err := DecodeServers("fuzz.yaml", data)
		if err != nil {
			checkErrorList(t, err)
			return
		}
		if len(servers) == 0 {
			t.Fatal("no servers and no error")
		}
		if errs := ValidateServers(servers); errs != nil {
			t.Fatalf("decoded servers fail ValidateServers: %v", errs)
		}
		out, err := yaml.Marshal(ServerList{APIVersion: APIVersion, Kind: KindServers, Servers: servers})
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		back, err := DecodeServers("fuzz.yaml", out)
		if err != nil {
			t.Fatalf("re-decoding %q: %v", out, err)
		}
		if !reflect.DeepEqual(back, servers) {
			t.Fatalf("round trip changed the servers:\n%#v\n%#v", servers, back)
		}
	})
}
