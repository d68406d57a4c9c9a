package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestClientSendsTokenAndDecodesErrors(t *testing.T) {
	var gotAuth, gotPath, gotQuery, gotIfMatch, gotFile, gotCT string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth, gotPath, gotQuery = r.Header.Get("Authorization"), r.URL.EscapedPath(), r.URL.RawQuery
		gotIfMatch, gotFile, gotCT = r.Header.Get("If-Match"), r.Header.Get("X-Corridor-File"), r.Header.Get("Content-Type")
		switch {
		case r.URL.Path == "/v1/apps" && r.Method == http.MethodPost:
			w.WriteHeader(http.StatusUnprocessableEntity)
			json.NewEncoder(w).Encode(Error{Error: "invalid app", Details: []string{"a.yaml:3:1: name: required"}})
		case strings.HasPrefix(r.URL.Path, "/v1/agents/"):
			json.NewEncoder(w).Encode(DesiredState{Revision: 7})
		case r.URL.Path == "/v1/events":
			w.WriteHeader(http.StatusBadGateway)
			w.Write([]byte("upstream down"))
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	defer srv.Close()
	c, err := NewClient(srv.URL+"/", "tok", nil)
	if err != nil {
		t.Fatal(err)
	}
	rev := int64(5)
	_, err = c.ApplyApp(context.Background(), []byte("name: x"), ApplyOptions{File: "a.yaml", IfMatch: &rev})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 422 || se.Message != "invalid app" || len(se.Details) != 1 {
		t.Fatalf("apply error = %#v", err)
	}
	if !strings.Contains(err.Error(), "a.yaml:3:1") || HTTPStatus(err) != 422 {
		t.Fatalf("error text %q lacks the details", err)
	}
	if gotAuth != "Bearer tok" || gotIfMatch != "5" || gotFile != "a.yaml" || gotCT != "application/yaml" {
		t.Fatalf("headers: auth %q if-match %q file %q type %q", gotAuth, gotIfMatch, gotFile, gotCT)
	}
	ds, err := c.Desired(context.Background(), "s 1", 3, 2*time.Second)
	if err != nil || ds.Revision != 7 {
		t.Fatalf("desired = %+v, %v", ds, err)
	}
	if gotPath != "/v1/agents/s%201/desired" || gotQuery != "index=3&wait=2s" {
		t.Fatalf("desired request: %s?%s", gotPath, gotQuery)
	}
	if err := c.DeleteApp(context.Background(), "x"); err != nil {
		t.Fatalf("204 answer: %v", err)
	}
	_, err = c.ListEvents(context.Background(), 0)
	if HTTPStatus(err) != http.StatusBadGateway || !strings.Contains(err.Error(), "upstream down") {
		t.Fatalf("non-JSON error = %v", err)
	}
}

func TestNewClientRejectsBadURLs(t *testing.T) {
	for _, u := range []string{"", "127.0.0.1:7443", "ftp://x", "https://"} {
		if _, err := NewClient(u, "", nil); err == nil {
			t.Errorf("NewClient(%q) succeeded", u)
		}
	}
}

func TestAgentTLSRejectsBadInput(t *testing.T) {
	if _, err := AgentTLS([]byte("x"), []byte("y"), []byte("z")); err == nil {
		t.Fatal("AgentTLS with garbage succeeded")
	}
	if _, err := CAPool([]byte("not pem")); err == nil {
		t.Fatal("CAPool with garbage succeeded")
	}
}
