package guest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestScopedName(t *testing.T) {
	for _, c := range []struct{ scope, task, want string }{
		{"", "shop/web/0", "shop-web-0"}, // unscoped: the names of agents before scopes
		{"s1", "shop/web/0", "s1.shop-web-0"},
		{"corlab-s1", "shop/web/0", "corlab-s1.shop-web-0"},
	} {
		if got := ScopedName(c.scope, c.task); got != c.want {
			t.Errorf("ScopedName(%q, %q) = %q, want %q", c.scope, c.task, got, c.want)
		}
	}
	if got := NetnsNameIn("s2", "shop/db/1"); got != "cor-s2.shop-db-1" {
		t.Errorf("NetnsNameIn = %q", got)
	}

	// Scopes that are not kept as they are: each maps to its own name, with
	// the hash marker "--" no kept scope holds.
	scopes := []string{"s1", "S1", "s1.example.com", "s1-example-com", "s1_example_com", "-s1", "s1-", "a--b",
		strings.Repeat("x", 40), strings.Repeat("x", 41), strings.Repeat("x", 200), "Ünïcode", "a/b", "a b", "."}
	seen := map[string]string{}
	for _, s := range scopes {
		sc := Scope(s)
		if prev, ok := seen[sc]; ok {
			t.Errorf("Scope(%q) = Scope(%q) = %q", s, prev, sc)
		}
		seen[sc] = s
		if len(sc) == 0 || len(sc) > maxScopeLen {
			t.Errorf("Scope(%q) = %q: length %d", s, sc, len(sc))
		}
		for _, r := range sc {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				t.Errorf("Scope(%q) = %q: bad character %q", s, sc, r)
			}
		}
		kept := sc == s
		if hashed := strings.Contains(sc, "--"); hashed == kept {
			t.Errorf("Scope(%q) = %q: kept %v, hash marker %v", s, sc, kept, hashed)
		}
		// Every scoped name splits back into the scope and the task name,
		// and stays far inside NAME_MAX.
		n := NetnsNameIn(s, "a-very-long-app-name/with-a-long-class/1234567")
		if len(n) > 4+maxScopeLen+1+maxNameLen || strings.Count(n, ScopeSep) != 1 {
			t.Errorf("NetnsNameIn(%q, ...) = %q", s, n)
		}
	}
	// One task under two scopes: two names (two lab servers, or two labs,
	// each holding a copy).
	if ScopedName("corlab-s1", "shop/web/0") == ScopedName("corlab-s2", "shop/web/0") ||
		ScopedName("cora-s1", "shop/web/0") == ScopedName("corb-s1", "shop/web/0") {
		t.Error("one task under two scopes has one name")
	}
}

// A guest keeps the name it was made with: records of agents before
// scopes (no name field) give the unscoped name, whatever the scope now.
func TestGuestNameFromRecord(t *testing.T) {
	dir := t.TempDir()
	task := "shop/web/0"
	if got := GuestNameIn(dir, RecordFile, "s1", task); got != "s1.shop-web-0" {
		t.Errorf("no record: %q", got)
	}
	// A record written by an agent before scopes.
	td := TaskDir(dir, task)
	if err := os.MkdirAll(td, 0o755); err != nil {
		t.Fatal(err)
	}
	old := `{"task":"shop/web/0","runtime":"netns","netns":"cor-shop-web-0","guest":{"task":"shop/web/0"}}`
	if err := os.WriteFile(filepath.Join(td, RecordFile), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := GuestNameIn(dir, RecordFile, "s1", task); got != "shop-web-0" {
		t.Errorf("old netns record: %q, want the unscoped name it was made with", got)
	}
	// A VM record before scopes: no netns, no name.
	if got := (Record{Task: task}).GuestName(); got != "shop-web-0" {
		t.Errorf("old vm record: %q", got)
	}
	if _, err := RecordGuest(dir, RecordFile, Record{Task: task, Name: "s1.shop-web-0", Netns: "cor-s1.shop-web-0"}); err != nil {
		t.Fatal(err)
	}
	if got := GuestNameIn(dir, RecordFile, "s9", task); got != "s1.shop-web-0" {
		t.Errorf("scoped record read under another scope: %q", got)
	}
}
