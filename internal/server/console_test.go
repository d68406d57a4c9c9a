package server

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/console/browsertest"
)

// reportShop plays the agents of the fleet: each reports its tasks
// running, a fresh WireGuard handshake with every server it shares an
// encrypted path with, and (s1 only) drops of web's connections that no
// rule allows.
func reportShop(t *testing.T, agents map[string]*testAgent, ts *testServer) {
	t.Helper()
	tasks := tasksOf(t, ts.admin, api.Filter{})
	paths, err := ts.admin.ListPaths(bg, api.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for name, a := range agents {
		st := api.Status{Name: name, PublicKey: a.req.PublicKey, Address: a.req.Address, Time: now}
		for _, task := range tasks {
			if task.Server == name {
				st.Tasks = append(st.Tasks, api.TaskStatus{Task: task.ID, State: api.TaskRunning, Runtime: "netns", Since: now})
			}
		}
		peers := map[string]bool{}
		for _, p := range paths {
			if p.Encrypt && !p.Local && p.FromServer == name && !peers[p.ToServer] {
				peers[p.ToServer] = true
				st.Peers = append(st.Peers, api.PeerStatus{Server: p.ToServer, LastHandshake: now.Add(-5 * time.Second), RxBytes: 4096, TxBytes: 8192})
			}
		}
		if name == "s1" {
			st.Drops = []api.DropCount{{App: "shop", FromClass: "web", Packets: 3, Kind: "out"}}
		}
		if err := a.c.ReportStatus(bg, name, st); err != nil {
			t.Fatalf("status of %s: %v", name, err)
		}
	}
}

// TestConsoleInBrowser drives the web console in headless Chromium against
// a real server whose agents are played by the test: a wrong token is
// refused, the shop graph has a lock on app->db and none on web->app, a
// scale through the API redraws the graph without a reload, Enter on a
// class opens its detail, and the fleet and path views show the agents'
// reports. Screenshots go to $CORRIDOR_TEST_ARTIFACTS.
func TestConsoleInBrowser(t *testing.T) {
	b := browsertest.New(t)
	ts := startServer(t, Config{})
	agents := map[string]*testAgent{}
	for i, n := range []string{"s1", "s2", "s3"} {
		agents[n] = ts.join(t, n, i, nil)
	}
	if _, err := ts.admin.ApplyApp(bg, []byte(shopYAML), api.ApplyOptions{File: "shop.yaml"}); err != nil {
		t.Fatalf("apply: %v", err)
	}
	eventually(t, 10*time.Second, "5 shop tasks placed", func() (bool, string) {
		n := len(tasksOf(t, ts.admin, api.Filter{App: "shop"}))
		return n == 5, fmt.Sprint(n)
	})
	reportShop(t, agents, ts)

	// A wrong token is refused, and nothing of the state is served.
	b.Do("open login page", 30*time.Second,
		chromedp.Navigate(ts.URL()+"/ui/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), "not-the-token"),
		chromedp.Click(chromedp.ID("login-submit")),
		chromedp.WaitVisible(chromedp.ID("login-error")),
	)
	b.Screenshot("wrong-token")
	msg, err := chromedp.Run(b.Ctx, chromedp.Text(chromedp.ID("login-error")))
	if err != nil || !strings.Contains(msg, "wrong admin token") {
		t.Fatalf("login error = %q, %v; want wrong admin token", msg, err)
	}
	code, err := browsertest.Eval[int](b, `fetch('/ui/api/state').then(r => r.status)`)
	if err != nil || code != http.StatusUnauthorized {
		t.Fatalf("state without a session: %d, %v; want 401", code, err)
	}

	b.Login(ts.URL(), ts.AdminToken())
	b.Do("open the shop app", 10*time.Second, chromedp.SetValue(chromedp.ID("app-select"), "shop"))
	b.Eventually("shop graph drawn", 20*time.Second,
		`document.querySelectorAll('#graph g.node:not(.external)').length === 3 && document.querySelector('#app-select').value === 'shop'`,
		`document.querySelector('#graph').outerHTML.slice(0, 400)`)
	b.Screenshot("shop-graph")

	edge := func(from, to string) string {
		return fmt.Sprintf(`document.querySelector('#graph g.edge[data-from=%q][data-to=%q]')`, from, to)
	}
	checks := []struct{ what, cond string }{
		{"app->db is encrypted with a lock", edge("app", "db") + `.getAttribute('data-state') === 'encrypted' && ` + edge("app", "db") + `.querySelector('.lock') !== null`},
		{"web->app is plain without a lock", edge("web", "app") + `.getAttribute('data-state') === 'plain' && ` + edge("web", "app") + `.querySelector('.lock') === null`},
		{"app->db label names its port", edge("app", "db") + `.textContent.includes('5432/tcp')`},
		{"web and db: denied", edge("web", "db") + `.getAttribute('data-state') === 'denied'`},
		{"web's published port 80: its clients drawn, the leg encrypted", edge("clients>web", "web") + `.querySelector('.lock') !== null && ` + edge("clients>web", "web") + `.textContent.includes(':80/tcp') && document.querySelector('#graph g.node.external.clients').textContent.includes('203.0.113.0/24')`},
		{"drops shown on web", `document.querySelector('#graph g.node[data-class="web"]').textContent.includes('3 dropped')`},
		{"no verify run recorded", `document.querySelector('#verify').textContent.includes('no verify run recorded')`},
	}
	for _, c := range checks {
		ok, err := browsertest.Eval[bool](b, c.cond)
		if err != nil || !ok {
			b.Screenshot("failed-check")
			t.Errorf("%s: %v, %v", c.what, ok, err)
		}
	}

	// Live: a scale through the API reaches the open page without a
	// reload (the marker set on the window survives only if the page
	// stays the same document).
	if _, err := browsertest.Eval[int](b, `window.__sameDocument = 1`); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.admin.Scale(bg, "shop", "app", 3); err != nil {
		t.Fatalf("scale: %v", err)
	}
	b.Eventually("graph shows app scaled to 3 without a reload", 20*time.Second,
		`(function(){ var n = document.querySelector('#graph g.node[data-class="app"]');
		  return window.__sameDocument === 1 && n.getAttribute('data-tasks') === '3' && n.getAttribute('data-placed') === '3'
		    && n.querySelectorAll('circle.task').length === 3; })()`,
		`document.querySelector('#graph g.node[data-class="app"]').outerHTML`)
	b.Screenshot("scaled")

	// Keyboard: Enter on a focused class opens its detail.
	b.Do("focus the db class", 10*time.Second, chromedp.Focus(chromedp.CSS(`#graph g.node[data-class="db"]`)))
	b.Do("press Enter", 10*time.Second, chromedp.KeyEvent("\r"))
	b.Eventually("Enter opens the db class's detail", 10*time.Second,
		`document.querySelector('#detail h2') !== null && document.querySelector('#detail h2').textContent === 'class db'`,
		`document.querySelector('#detail').textContent`)
	b.Screenshot("detail-db")

	// Fleet and paths, from the agents' reports.
	reportShop(t, agents, ts) // the new app task reports running too
	b.Do("open the fleet view", 10*time.Second, chromedp.Click(chromedp.ID("tab-fleet")))
	b.Eventually("fleet lists three servers", 10*time.Second,
		`document.querySelectorAll('#fleet tbody tr[data-server]').length === 3 &&
		 Array.from(document.querySelectorAll('#fleet tbody tr')).every(r => r.getAttribute('data-state') === 'ready')`,
		`document.querySelector('#fleet tbody').textContent`)
	b.Screenshot("fleet")
	b.Do("open the paths view", 10*time.Second, chromedp.Click(chromedp.ID("tab-paths")))
	b.Eventually("encrypted paths between hosts are up with a handshake age", 10*time.Second,
		`(function(){ var rows = Array.from(document.querySelectorAll('#paths tbody tr'));
		  var enc = rows.filter(r => r.querySelector('.kind-encrypted'));
		  return enc.length > 0 && enc.every(r => r.getAttribute('data-state') === 'up' && !r.children[5].textContent.includes('never')); })()`,
		`document.querySelector('#paths tbody').textContent`)
	b.Screenshot("paths")
}

// consoleLedgerYAML exports a service; outsideYAML imports it, reaches outside
// destinations and publishes a port: the console draws each of those ends
// as a node of its own (a rule to an imported service had no node to end
// on, and the graph of such an app did not draw).
const consoleLedgerYAML = `apiVersion: corridor/v1
kind: App
name: ledger
classes:
  - {name: api, tasks: 1, guest: {runtime: netns, command: [sleep, "1000"]}, resources: {cpu: 100m, memory: 16Mi}, ports: [{port: 7000}]}
exports:
  - {name: accounts, class: api, ports: [7000]}
`

const outsideYAML = `apiVersion: corridor/v1
kind: App
name: store
classes:
  - name: front
    tasks: 1
    guest: {runtime: netns, command: [sleep, "1000"]}
    resources: {cpu: 100m, memory: 16Mi}
    publish:
      - {port: 443, to: 8443, from: [198.51.100.0/24, 203.0.113.0/24, 192.0.2.0/24]}
imports:
  - {service: ledger/accounts, as: books}
egress:
  - {from: front, to: [192.0.2.53/32], ports: [443]}
rules:
  - {from: front, to: books, ports: [7000], encrypt: true}
`

func TestConsoleDrawsOutsideEnds(t *testing.T) {
	b := browsertest.New(t)
	ts := startServer(t, Config{})
	ts.join(t, "s1", 0, nil)
	for _, y := range []string{consoleLedgerYAML, outsideYAML} {
		if _, err := ts.admin.ApplyApp(bg, []byte(y), api.ApplyOptions{File: "x.yaml"}); err != nil {
			t.Fatalf("apply: %v", err)
		}
	}
	b.Login(ts.URL(), ts.AdminToken())
	b.Do("open the store app", 10*time.Second, chromedp.SetValue(chromedp.ID("app-select"), "store"))
	b.Eventually("store graph drawn", 20*time.Second,
		`document.querySelector('#app-select').value === 'store' && document.querySelectorAll('#graph g.node').length === 4`,
		`document.querySelector('#graph').outerHTML.slice(0, 600)`)
	b.Screenshot("store-graph")
	edge := func(from, to string) string {
		return fmt.Sprintf(`document.querySelector('#graph g.edge[data-from=%q][data-to=%q]')`, from, to)
	}
	checks := []struct{ what, cond string }{
		{"the imported service is a node, named by the import", `document.querySelector('#graph g.node.external.service[data-class="books"]').textContent.includes('ledger/accounts')`},
		{"front->books encrypted with a lock", edge("front", "books") + `.getAttribute('data-state') === 'encrypted' && ` + edge("front", "books") + `.querySelector('.lock') !== null`},
		{"the published port's clients, port and target port", edge("clients>front", "front") + `.textContent.includes(':443→8443/tcp') && document.querySelector('#graph g.node.external.clients').textContent.includes('+1')`},
		{"egress drawn apart, not encrypted", edge("front", "outside:192.0.2.53/32") + `.getAttribute('data-state') === 'egress' && ` + edge("front", "outside:192.0.2.53/32") + `.querySelector('.lock') === null`},
		{"every edge has both ends placed", `Array.from(document.querySelectorAll('#graph g.edge line.wire')).every(l => !isNaN(parseFloat(l.getAttribute('x2'))))`},
	}
	for _, c := range checks {
		ok, err := browsertest.Eval[bool](b, c.cond)
		if err != nil || !ok {
			b.Screenshot("failed-outside-check")
			t.Errorf("%s: %v, %v", c.what, ok, err)
		}
	}
	// A click as D3 receives it (the node moves while the layout settles,
	// so a click at its position could miss).
	if _, err := browsertest.Eval[bool](b, `document.querySelector('#graph g.node[data-class="books"]').dispatchEvent(new MouseEvent('click', {bubbles: true}))`); err != nil {
		t.Fatalf("click the imported service: %v", err)
	}
	b.Eventually("its detail says what it is", 10*time.Second,
		`document.querySelector('#detail').textContent.includes('imported service ledger/accounts')`,
		`document.querySelector('#detail').textContent`)
}
