package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/examples"
	"github.com/corridor-dev/corridor/internal/probe"
	"github.com/corridor-dev/corridor/internal/sample"
	"github.com/corridor-dev/corridor/internal/verify"
)

// TestShopWithPostgres runs examples/shop-pg.yaml, whose db tier is a real
// PostgreSQL: verify proves app -> db encrypted, and an order sent to the
// web tier is stored in PostgreSQL and listed back, named by its task.
func TestShopWithPostgres(t *testing.T) {
	if _, err := sample.FindPostgres(""); err != nil {
		t.Skipf("no PostgreSQL on this machine (CI installs the postgresql package): %v", err)
	}
	if _, err := user.Lookup("postgres"); err != nil && os.Geteuid() == 0 {
		t.Skipf("no user postgres to run PostgreSQL as: %v", err)
	}
	f := upFleet(t)
	f.apply(t, examples.ShopPG)
	tasks := f.settle(t, 5)
	// The task runs from the moment its program starts; PostgreSQL listens
	// only once initdb and its start-up are done (seconds, longer under
	// -race on a busy machine).
	rep := f.verifyWithin(t, "shoppg", 90*time.Second)
	proved := false
	for _, c := range rep.Checks {
		if c.ToClass == "db" && c.Expect == verify.Encrypted && c.OK {
			proved = true
		}
	}
	if !proved {
		t.Fatalf("no encrypted path to PostgreSQL was proved: %+v", rep.Checks)
	}

	var web string
	for _, ti := range tasks {
		if ti.Class == "web" {
			web = ti.ID
		}
	}
	ns := f.lab.GuestNetns(web)
	hc := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return probe.DialContext(ctx, ns, network, addr)
		}},
	}
	// PostgreSQL may still be making its cluster when its task runs: the
	// app answers 502 until it accepts connections.
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := hc.Post("http://127.0.0.1:80/api/orders", "application/json", strings.NewReader(`{"item":"e2e tea","qty":2}`))
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				break
			}
			err = &httpStatusError{resp.Status, string(b)}
		}
		if time.Now().After(deadline) {
			t.Fatalf("order through web: %v", err)
		}
		time.Sleep(time.Second)
	}
	resp, err := hc.Get("http://127.0.0.1:80/api/summary")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum sample.Summary
	if err := json.NewDecoder(resp.Body).Decode(&sum); err != nil {
		t.Fatal(err)
	}
	if sum.ServedBy.DB != "shoppg/db/0" || sum.OrderCount < 1 {
		t.Fatalf("summary: %d orders, served by %+v; want orders from PostgreSQL task shoppg/db/0", sum.OrderCount, sum.ServedBy)
	}
	found := false
	for _, o := range sum.Recent {
		found = found || o.Item == "e2e tea"
	}
	if !found {
		t.Errorf("the order is not listed back: %+v", sum.Recent)
	}
}

type httpStatusError struct{ status, body string }

func (e *httpStatusError) Error() string { return e.status + ": " + strings.TrimSpace(e.body) }
