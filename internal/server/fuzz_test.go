package server

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// FuzzApplyBody feeds arbitrary bodies, as YAML and as JSON, to the parser
// of POST /v1/apps and compiles what it accepts on a small fleet: nothing
// may panic, an accepted app must validate, and a refusal must be a 4xx
// with a message.
func FuzzApplyBody(f *testing.F) {
	shop, err := os.ReadFile("../../examples/shop.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(shop, false)
	f.Add([]byte(`{"apiVersion":"corridor/v1","kind":"App","name":"a","classes":[{"name":"c","tasks":1,"guest":{"runtime":"netns","command":["x"]},"resources":{"cpu":100,"memory":67108864}}]}`), true)
	f.Add([]byte(`[{"name":"a"},{"name":"a"}]`), true)
	f.Add([]byte("a: &a [*a]\n"), false)
	f.Add([]byte("{"), true)
	servers := []spec.Server{
		{Name: "s1", Address: "198.18.0.11", Capacity: spec.Resources{CPU: 4000, Memory: 8 << 30}, State: spec.ServerReady},
		{Name: "s2", Address: "198.18.0.12", Capacity: spec.Resources{CPU: 4000, Memory: 8 << 30}, State: spec.ServerReady},
	}
	s := &Server{cfg: Config{MaxBody: 1 << 20}}
	f.Fuzz(func(t *testing.T, body []byte, asJSON bool) {
		r := httptest.NewRequest(http.MethodPost, "/v1/apps", bytes.NewReader(body))
		if asJSON {
			r.Header.Set("Content-Type", "application/json")
		}
		w := httptest.NewRecorder()
		in, err := s.parseApps(w, r)
		if err != nil {
			he, ok := err.(*httpError)
			if err != errBodyWritten && (!ok || he.code < 400 || he.code > 499 || he.msg == "") {
				t.Fatalf("refusal %v is not a 4xx with a message", err)
			}
			return
		}
		apps := make([]spec.App, len(in))
		for i, a := range in {
			if errs := spec.ValidateApp(&a.app); len(errs) > 0 {
				t.Fatalf("accepted an invalid app: %v", errs)
			}
			apps[i] = a.app
		}
		// Whatever was accepted compiles or fails with a typed error.
		if _, err := compile.Compile(compile.Input{Apps: apps, Servers: servers}); err != nil {
			var ie *compile.InputError
			var pe *compile.PlacementError
			if !asError(err, &ie) && !asError(err, &pe) {
				t.Fatalf("untyped compile error: %v", err)
			}
		}
	})
}

func asError[T error](err error, target *T) bool { return errors.As(err, target) }
