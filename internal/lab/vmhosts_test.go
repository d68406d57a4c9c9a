package lab

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// A VM host's agent.yaml is what docs/install.md tells an operator to
// write (step 4): every key of the page's block, with the same value,
// except the server URL (the lab's) and the labels (the host's).
func TestVMAgentConfigFollowsInstallPage(t *testing.T) {
	b, err := os.ReadFile("../../docs/install.md")
	if err != nil {
		t.Fatal(err)
	}
	var page map[string]any
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		if strings.Contains(m[1], "join-token-file:") {
			if err := yaml.Unmarshal([]byte(m[1]), &page); err != nil {
				t.Fatalf("install.md's agent.yaml block: %v", err)
			}
		}
	}
	if page == nil {
		t.Fatal("docs/install.md has no agent.yaml block (with join-token-file)")
	}
	s := &Server{Name: "s2", Labels: map[string]string{"zone": "b"}, Listen: "198.18.116.12:7444"}
	var got map[string]any
	if err := yaml.Unmarshal(vmAgentConfig(s, "https://198.18.116.1:7443"), &got); err != nil {
		t.Fatal(err)
	}
	for k, v := range page {
		switch k {
		case "server":
			if !reflect.DeepEqual(got[k], []any{"https://198.18.116.1:7443"}) {
				t.Errorf("server: %v", got[k])
			}
		case "labels":
			if !reflect.DeepEqual(got[k], map[string]any{"zone": "b"}) {
				t.Errorf("labels: %v", got[k])
			}
		default:
			if !reflect.DeepEqual(got[k], v) {
				t.Errorf("%s: the VM host has %v, docs/install.md says %v", k, got[k], v)
			}
		}
	}
	for k, v := range map[string]any{"name": "s2", "underlay-iface": "eth0", "listen": "198.18.116.12:7444"} {
		if got[k] != v {
			t.Errorf("%s: %v, want %v", k, got[k], v)
		}
	}
}
