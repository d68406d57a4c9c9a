package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/api"
)

func hexSum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func TestArtifactPushFetch(t *testing.T) {
	ts := startServer(t, Config{ArtifactMaxSize: 1 << 20})
	ctx := context.Background()
	prog := []byte("#!/bin/sh\necho artifact\n")
	sum := hexSum(prog)

	// Push: admin only.
	anon := ts.client(t, "", nil)
	if _, err := anon.PushArtifact(ctx, sum, bytes.NewReader(prog), int64(len(prog))); api.HTTPStatus(err) != http.StatusUnauthorized {
		t.Fatalf("push without a token: %v, want 401", err)
	}
	info, err := ts.admin.PushArtifact(ctx, sum, bytes.NewReader(prog), int64(len(prog)))
	if err != nil {
		t.Fatal(err)
	}
	if info.SHA256 != sum || info.Size != int64(len(prog)) || info.URL != "corridor://"+sum {
		t.Fatalf("info %+v", info)
	}
	// Again: the same, stored once.
	if _, err := ts.admin.PushArtifact(ctx, sum, bytes.NewReader(prog), int64(len(prog))); err != nil {
		t.Fatal(err)
	}
	list, err := ts.admin.ListArtifacts(ctx)
	if err != nil || len(list) != 1 || list[0].SHA256 != sum {
		t.Fatalf("list %+v, %v", list, err)
	}

	// Fetch: a joined agent's certificate.
	a := ts.join(t, "s1", 1, nil)
	rc, err := a.c.FetchArtifact(ctx, sum)
	if err != nil {
		t.Fatalf("agent fetch: %v", err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, prog) {
		t.Fatalf("fetched %q", got)
	}
	// No certificate, no token: refused.
	if _, err := anon.FetchArtifact(ctx, sum); api.HTTPStatus(err) != http.StatusUnauthorized {
		t.Errorf("fetch without a certificate: %v, want 401", err)
	}
	// A wrong token: refused.
	if _, err := ts.client(t, "wrong", nil).FetchArtifact(ctx, sum); api.HTTPStatus(err) != http.StatusUnauthorized {
		t.Errorf("fetch with a wrong token: %v, want 401", err)
	}
	// A removed server's certificate: refused.
	if err := ts.admin.RemoveServer(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.FetchArtifact(ctx, sum); api.HTTPStatus(err) != http.StatusForbidden {
		t.Errorf("fetch by a removed server: %v, want 403", err)
	}
	// The admin may fetch.
	rc, err = ts.admin.FetchArtifact(ctx, sum)
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	// Unknown: 404 saying what to do.
	other := hexSum([]byte("other"))
	if _, err := ts.admin.FetchArtifact(ctx, other); api.HTTPStatus(err) != http.StatusNotFound || !strings.Contains(err.Error(), "corridor artifact push") {
		t.Errorf("unknown artifact: %v", err)
	}
	events, _ := ts.admin.ListEvents(ctx, 20)
	found := false
	for _, e := range events {
		found = found || (e.Action == "artifact.push" && e.Object == "artifact/"+sum)
	}
	if !found {
		t.Errorf("no artifact.push event in %+v", events)
	}
}

func TestArtifactPushRefused(t *testing.T) {
	ts := startServer(t, Config{ArtifactMaxSize: 1000})
	ctx := context.Background()
	big := bytes.Repeat([]byte("x"), 1001)
	if _, err := ts.admin.PushArtifact(ctx, hexSum(big), bytes.NewReader(big), int64(len(big))); api.HTTPStatus(err) != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized push: %v, want 413", err)
	}
	// A body past the limit without a length (chunked) is cut off too.
	if _, err := ts.admin.PushArtifact(ctx, hexSum(big), io.MultiReader(bytes.NewReader(big)), -1); api.HTTPStatus(err) != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized chunked push: %v, want 413", err)
	}
	small := []byte("small")
	if _, err := ts.admin.PushArtifact(ctx, hexSum([]byte("else")), bytes.NewReader(small), int64(len(small))); api.HTTPStatus(err) != http.StatusBadRequest {
		t.Errorf("mismatched push: %v, want 400", err)
	}
	if _, err := ts.admin.PushArtifact(ctx, "abc", bytes.NewReader(small), int64(len(small))); api.HTTPStatus(err) != http.StatusBadRequest {
		t.Errorf("bad sha256: %v, want 400", err)
	}
	ents, _ := os.ReadDir(filepath.Join(ts.dir, ArtifactsDir))
	if len(ents) != 0 {
		t.Errorf("refused pushes left %v", ents)
	}
}
