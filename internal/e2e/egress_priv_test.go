package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/verify"
)

// TestEgressToOutside (issue 15): the lab's outside service answers on
// two addresses of the underlay; an app's web class may reach the first
// on lab.OutsidePort. verify proves it (reached from web, not on another
// port, not from the other class), and a direct probe shows that the
// second outside address stays unreachable while the first, probed just
// before from the same task, answers.
func TestEgressToOutside(t *testing.T) {
	f := upFleet(t)
	out := f.lab.Outside
	if out == nil || len(out.Addresses) < 2 || out.Process == nil {
		t.Fatalf("the lab has no outside service: %+v", out)
	}
	doc := fmt.Sprintf(`apiVersion: corridor/v1
kind: App
name: egress
classes:
  - name: web
    tasks: 2
    guest:
      runtime: netns
      command: [corridor, sample, db, --listen, ":80"]
    resources: {cpu: 100m, memory: 64Mi}
    ports: [{port: 80}]
  - name: api
    tasks: 1
    guest:
      runtime: netns
      command: [corridor, sample, db, --listen, ":80"]
    resources: {cpu: 100m, memory: 64Mi}
    ports: [{port: 80}]
egress:
  - from: web
    to: [%s]
    ports: [%d]
`, out.Addresses[0], out.Port)
	name := f.applyOwn(t, []byte(doc))
	tasks := f.settle(t, 3)
	rep := f.verifyWithin(t, name, 20*time.Second)
	kinds := map[string]int{}
	for _, c := range rep.Checks {
		if c.ToClass != verify.OutsideClass {
			continue
		}
		if c.ToAddr != out.Addresses[0].String() {
			t.Errorf("verify probed outside %s, which the app does not name", c.ToAddr)
		}
		kinds[c.FromClass+":"+c.Expect]++
	}
	if kinds["web:"+verify.Plain] != 2 || kinds["web:"+verify.Denied] != 2 || kinds["api:"+verify.Denied] != 1 {
		t.Fatalf("verify's outside checks: %v, want web reaching from both tasks, web denied another port, api denied", kinds)
	}

	var web api.TaskInfo
	for _, tk := range tasks {
		if tk.Class == "web" {
			web = tk
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	probeTo := func(addr string) api.ProbeResult {
		t.Helper()
		res, err := f.c.Probe(ctx, web.Server, api.ProbeRequest{
			FromTask: web.ID, ToAddr: addr, Network: "tcp", Port: out.Port,
			Marker: []byte("corridor-e2e-egress"), Timeout: 1500 * time.Millisecond,
		})
		if err != nil {
			t.Fatalf("probe %s -> %s:%d: %v", web.ID, addr, out.Port, err)
		}
		return res
	}
	// Positive control: the named address answers this task.
	if res := probeTo(out.Addresses[0].String()); !res.Connected {
		t.Fatalf("control: %s did not reach the named outside address %s:%d: %+v", web.ID, out.Addresses[0], out.Port, res)
	}
	if res := probeTo(out.Addresses[1].String()); res.Connected || res.Refused {
		t.Fatalf("%s reached %s:%d, an outside address its app does not name: %+v", web.ID, out.Addresses[1], out.Port, res)
	}
}
