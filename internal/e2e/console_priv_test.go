package e2e

import (
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/corridor-dev/corridor/examples"
	"github.com/corridor-dev/corridor/internal/console/browsertest"
)

// TestConsoleOnLab opens the web console of a real lab in headless
// Chromium, as an operator would after `corridor lab up`: the shop graph
// has a lock on app->db and none on web->app, the fleet view shows the
// three servers ready with their tasks running, and the path view shows
// each encrypted path between two servers up with the handshake age its
// agent reported. Screenshots go to $CORRIDOR_TEST_ARTIFACTS.
func TestConsoleOnLab(t *testing.T) {
	browsertest.Chromium(t) // skip before building a lab when there is no browser
	f := upFleet(t)
	app := f.applyOwn(t, examples.Shop)
	f.settle(t, 5)
	tok, err := f.lab.AdminToken()
	if err != nil {
		t.Fatal(err)
	}

	b := browsertest.New(t)
	b.Login(f.lab.ServerURL, tok)
	b.Do("open the app", 20*time.Second,
		chromedp.Navigate(f.lab.ServerURL+"/ui/#app="+url.QueryEscape(app)),
		chromedp.WaitReady(chromedp.CSS("body[data-revision]")),
	)
	edge := func(from, to string) string {
		return fmt.Sprintf(`document.querySelector('#graph g.edge[data-from=%q][data-to=%q]')`, from, to)
	}
	b.Eventually("the graph of "+app+" has a lock on app->db and none on web->app", 20*time.Second,
		fmt.Sprintf(`document.querySelector('#app-select').value === %q && %s !== null && %s.querySelector('.lock') !== null && %s !== null && %s.querySelector('.lock') === null`,
			app, edge("app", "db"), edge("app", "db"), edge("web", "app"), edge("web", "app")),
		`document.querySelector('#app-select').value + ' ' + (document.querySelector('#graph') || {}).innerHTML`)
	b.Eventually("every task runs", 30*time.Second,
		`document.querySelectorAll('#graph circle.task').length === 5 && document.querySelectorAll('#graph circle.task.running').length === 5`,
		`Array.from(document.querySelectorAll('#graph circle.task')).map(c => c.getAttribute('class')).join(' ')`)
	b.Screenshot("lab-shop-graph")

	b.Do("open the fleet view", 10*time.Second, chromedp.Click(chromedp.ID("tab-fleet")))
	b.Eventually("three servers ready", 20*time.Second,
		`document.querySelectorAll('#fleet tbody tr[data-state="ready"]').length === 3`,
		`document.querySelector('#fleet tbody').textContent`)
	b.Screenshot("lab-fleet")

	b.Do("open the paths view", 10*time.Second, chromedp.Click(chromedp.ID("tab-paths")))
	b.Eventually("encrypted paths up with a handshake age", 30*time.Second,
		`(function(){ var rows = Array.from(document.querySelectorAll('#paths tbody tr'));
		  var enc = rows.filter(r => r.querySelector('.kind-encrypted'));
		  return rows.length > 0 && enc.every(r => r.getAttribute('data-state') === 'up' && !r.children[5].textContent.includes('never')); })()`,
		`document.querySelector('#paths tbody').textContent`)
	b.Screenshot("lab-paths")
}
