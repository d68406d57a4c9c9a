package spec

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// baseApp is a valid app; the table tests change one piece of it and
// expect the error at a known line. Keep line numbers in the comments
// right when editing.
const baseApp = `apiVersion: corridor/v1
kind: App
name: shop
classes:
  - name: web
    tasks: 2
    guest:
      runtime: netns
      command: [corridor, sample, web]
    resources:
      cpu: 100m
      memory: 64Mi
    ports:
      - port: 80
  - name: app
    tasks: 2
    guest:
      runtime: netns
      command: [corridor, sample, app]
      env:
        LOG_LEVEL: debug
    resources:
      cpu: 250m
      memory: 128Mi
    placement:
      spreadBy: zone
  - name: db
    tasks: 1
    guest:
      runtime: vm
      kernel: /boot/vmlinux
    resources:
      cpu: 1
      memory: 256Mi
rules:
  - from: web
    to: app
    ports: [8080]
    encrypt: false
  - from: app
    to: db
    ports: [5432]
    encrypt: true
`

// Line numbers of baseApp (1-based).
const (
	lineName       = 3
	lineClasses    = 4
	lineWebName    = 5
	lineWebTasks   = 6
	lineWebRuntime = 8
	lineWebCommand = 9
	lineWebCPU     = 11
	lineWebMemory  = 12
	lineWebPort    = 14
	lineAppEnvKey  = 21
	lineAppSpread  = 26
	lineDBRuntime  = 30
	lineDBKernel   = 31
	lineRule0      = 36
	lineRule0To    = 37
	lineRule0Ports = 38
	lineRule0Enc   = 39
	lineRule1      = 40
	lineRule1Enc   = 43
)

// edit replaces old, which must occur exactly once in s.
func edit(t *testing.T, s, old, new string) string {
	t.Helper()
	if n := strings.Count(s, old); n != 1 {
		t.Fatalf("edit: %q occurs %d times in the base", old, n)
	}
	return strings.Replace(s, old, new, 1)
}

type wantErr struct {
	line  int
	field string
	msg   string
}

// checkErrs asserts that err is an ErrorList holding exactly the wanted
// problems (in any order), each printed as "file:line:col: field: ...".
func checkErrs(t *testing.T, file string, err error, want []wantErr) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want %v", want)
	}
	list, ok := AsErrorList(err)
	if !ok {
		t.Fatalf("error %v (%T) is not an ErrorList", err, err)
	}
	if len(list) != len(want) {
		t.Errorf("got %d errors, want %d:\n%v", len(list), len(want), err)
	}
	for _, w := range want {
		found := false
		for _, e := range list {
			if e.Line == w.line && e.Field == w.field && strings.Contains(e.Msg, w.msg) {
				prefix := fmt.Sprintf("%s:%d:%d: ", file, w.line, e.Column)
				if w.field != "" {
					prefix += w.field + ": "
				}
				if !strings.HasPrefix(e.Error(), prefix) {
					t.Errorf("error prints as %q, want prefix %q", e.Error(), prefix)
				}
				found = true
			}
		}
		if !found {
			t.Errorf("missing error at line %d field %s containing %q; got:\n%v", w.line, w.field, w.msg, err)
		}
	}
}

func TestBaseAppIsValid(t *testing.T) {
	apps, err := DecodeApps("base.yaml", []byte(baseApp))
	if err != nil {
		t.Fatal(err)
	}
	if len(apps) != 1 || len(apps[0].Classes) != 3 || len(apps[0].Rules) != 2 {
		t.Fatalf("decoded %+v", apps)
	}
	a := apps[0]
	if a.Classes[0].Ports[0].Protocol != ProtoTCP || a.Rules[0].Protocol != ProtoTCP {
		t.Errorf("protocol defaults not filled in: %+v %+v", a.Classes[0].Ports, a.Rules)
	}
	if a.Classes[1].Guest.Env["LOG_LEVEL"] != "debug" || a.Classes[1].Resources.CPU != 250 || a.Classes[2].Resources.Memory != 256<<20 {
		t.Errorf("decoded values wrong: %+v", a.Classes)
	}
	if !a.Rules[1].Encrypt || a.Rules[0].Encrypt {
		t.Errorf("encrypt decoded wrong: %+v", a.Rules)
	}
}

func TestAppErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		old, new string
		want     []wantErr
	}{
		{"api version", "apiVersion: corridor/v1", "apiVersion: corridor/v2",
			[]wantErr{{1, "apiVersion", "must be corridor/v1"}}},
		{"api version missing", "apiVersion: corridor/v1\n", "",
			[]wantErr{{1, "apiVersion", "apiVersion is required"}}},
		{"app name upper", "name: shop", "name: Shop",
			[]wantErr{{lineName, "name", `app name "Shop" is not valid`}}},
		{"app name too long", "name: shop", "name: " + strings.Repeat("a", 33),
			[]wantErr{{lineName, "name", "is not valid"}}},
		{"app name digit first", "name: shop", "name: 1shop",
			[]wantErr{{lineName, "name", "is not valid"}}},
		{"app name missing", "name: shop\n", "",
			[]wantErr{{1, "name", "app name is required"}}},
		{"class name", "- name: web", "- name: web_1",
			[]wantErr{{lineWebName, "classes[0].name", `class name "web_1" is not valid`}, {lineRule0, "rules[0].from", `class "web" is not defined`}}},
		{"class name trailing dash", "- name: web", "- name: web-",
			[]wantErr{{lineWebName, "classes[0].name", "is not valid"}, {lineRule0, "rules[0].from", `(classes: app, db, web-)`}}},
		{"duplicate class", "- name: db", "- name: web",
			[]wantErr{
				{27, "classes[2].name", `class "web" is already defined by classes[0] (line 5)`},
				{lineRule1 + 1, "rules[1].to", `class "db" is not defined`},
			}},
		{"no classes", "classes:\n", "classes: []\nx:\n",
			[]wantErr{{lineClasses + 1, "x", `unknown field "x" (known: apiVersion, classes, egress, exports, imports, kind, name, network, resolvers, rules)`}, {lineClasses, "classes", "at least one class"}}},
		{"negative tasks", "tasks: 2\n    guest:\n      runtime: netns\n      command: [corridor, sample, web]", "tasks: -1\n    guest:\n      runtime: netns\n      command: [corridor, sample, web]",
			[]wantErr{{lineWebTasks, "classes[0].tasks", "must not be negative"}}},
		{"absurd tasks", "tasks: 1\n", "tasks: 1001\n",
			[]wantErr{{28, "classes[2].tasks", "at most 1000"}}},
		{"tasks not a number", "tasks: 1\n", "tasks: one\n",
			[]wantErr{{28, "classes[2].tasks", `expected a whole number, got "one"`}}},
		{"tasks missing", "    tasks: 1\n", "",
			[]wantErr{{27, "classes[2].tasks", "tasks is required"}}},
		{"unknown field", "    tasks: 1\n", "    tasks: 1\n    replicas: 3\n",
			[]wantErr{{29, "classes[2].replicas", `unknown field "replicas"`}}},
		{"misspelt field", "spreadBy: zone", "spreadby: zone",
			[]wantErr{{lineAppSpread, "classes[1].placement.spreadby", `did you mean "spreadBy"`}}},
		{"duplicate field", "    tasks: 1\n", "    tasks: 1\n    tasks: 2\n",
			[]wantErr{{29, "classes[2].tasks", "given twice (first on line 28)"}}},
		{"runtime", "runtime: vm", "runtime: docker",
			[]wantErr{{lineDBRuntime, "classes[2].guest.runtime", `runtime must be netns or vm, got "docker"`}}},
		{"runtime missing", "      runtime: vm\n", "",
			[]wantErr{{29, "classes[2].guest.runtime", "runtime is required"}}},
		{"vm default image without command", "      kernel: /boot/vmlinux\n", "      command: []\n",
			[]wantErr{{31, "classes[2].guest.command", "needs a command"}}},
		{"vm kernel and image", "kernel: /boot/vmlinux", "kernel: /boot/vmlinux\n      image: /var/lib/disk.img",
			[]wantErr{{32, "classes[2].guest.image", "not both"}}},
		{"vm image only", "kernel: /boot/vmlinux", "image: /var/lib/disk.img", nil},
		{"vm initrd without kernel", "kernel: /boot/vmlinux", "image: /d.img\n      initrd: /i.img",
			[]wantErr{{32, "classes[2].guest.initrd", "initrd needs a kernel"}}},
		{"vm vcpus", "kernel: /boot/vmlinux", "kernel: /boot/vmlinux\n      vcpus: 65",
			[]wantErr{{32, "classes[2].guest.vcpus", "vcpus must be between 1 and 64"}}},
		{"netns user", "command: [corridor, sample, web]", "command: [corridor, sample, web]\n      user: \"1000:1001\"\n      netRaw: true", nil},
		{"netns user name", "command: [corridor, sample, web]", "command: [corridor, sample, web]\n      user: postgres",
			[]wantErr{{10, "classes[0].guest.user", "the UID must be a number (names are refused"}}},
		{"netns user root", "command: [corridor, sample, web]", "command: [corridor, sample, web]\n      user: \"0\"",
			[]wantErr{{10, "classes[0].guest.user", "must not be 0: a netns guest never runs as root"}}},
		{"netns group root", "command: [corridor, sample, web]", "command: [corridor, sample, web]\n      user: \"1000:0\"",
			[]wantErr{{10, "classes[0].guest.user", "the GID must not be 0"}}},
		{"vm user and netRaw", "kernel: /boot/vmlinux", "kernel: /boot/vmlinux\n      user: \"1000\"\n      netRaw: true",
			[]wantErr{{32, "classes[2].guest.user", "only to runtime netns"}, {33, "classes[2].guest.netRaw", "only to runtime netns"}}},
		{"pids", "      memory: 64Mi\n", "      memory: 64Mi\n      pids: 8\n",
			[]wantErr{{13, "classes[0].resources.pids", "pids must be between 16 and 1048576 (or left out for 1024), got 8"}}},
		{"pids ok", "      memory: 64Mi\n", "      memory: 64Mi\n      pids: 256\n", nil},
		{"netns no command", "      command: [corridor, sample, web]\n", "",
			[]wantErr{{7, "classes[0].guest.command", "command is required for runtime netns"}}},
		{"netns empty command", "command: [corridor, sample, web]", "command: []",
			[]wantErr{{lineWebCommand, "classes[0].guest.command", "command is required"}}},
		{"netns empty program", "command: [corridor, sample, web]", `command: ["", x]`,
			[]wantErr{{lineWebCommand, "classes[0].guest.command[0]", "program name is empty"}}},
		{"netns with kernel", "command: [corridor, sample, web]", "command: [a]\n      kernel: /k",
			[]wantErr{{10, "classes[0].guest.kernel", "only to runtime vm"}}},
		{"command not a list", "command: [corridor, sample, web]", "command: corridor sample web",
			[]wantErr{{lineWebCommand, "classes[0].guest.command", `expected a list, got "corridor sample web"`}}},
		{"env reserved", "LOG_LEVEL: debug", "CORRIDOR_APP: x",
			[]wantErr{{lineAppEnvKey, "classes[1].guest.env.CORRIDOR_APP", "reserved"}}},
		{"env bad name", "LOG_LEVEL: debug", "1LOG: x",
			[]wantErr{{lineAppEnvKey, "classes[1].guest.env.1LOG", "not valid"}}},
		{"env bad name quoted", "LOG_LEVEL: debug", `"LOG LEVEL": x`,
			[]wantErr{{lineAppEnvKey, `classes[1].guest.env["LOG LEVEL"]`, "not valid"}}},
		{"env duplicate", "LOG_LEVEL: debug", "LOG_LEVEL: debug\n        LOG_LEVEL: info",
			[]wantErr{{22, "classes[1].guest.env.LOG_LEVEL", "given twice"}}},
		{"env number value", "LOG_LEVEL: debug", "LOG_LEVEL: 3", nil},
		{"cpu missing", "      cpu: 100m\n", "",
			[]wantErr{{10, "classes[0].resources.cpu", "cpu is required"}}},
		{"cpu zero", "cpu: 100m", "cpu: 0",
			[]wantErr{{lineWebCPU, "classes[0].resources.cpu", "cpu is required"}}},
		{"cpu negative", "cpu: 100m", "cpu: -100m",
			[]wantErr{{lineWebCPU, "classes[0].resources.cpu", "negative"}}},
		{"cpu garbage", "cpu: 100m", "cpu: fast",
			[]wantErr{{lineWebCPU, "classes[0].resources.cpu", "not a CPU quantity"}}},
		{"cpu absurd", "cpu: 100m", "cpu: 2048",
			[]wantErr{{lineWebCPU, "classes[0].resources.cpu", "more than 1024 CPUs"}}},
		{"memory missing", "      memory: 64Mi\n", "",
			[]wantErr{{10, "classes[0].resources.memory", "memory is required"}}},
		{"memory small", "memory: 64Mi", "memory: 1Mi",
			[]wantErr{{lineWebMemory, "classes[0].resources.memory", "at least 4Mi, got 1Mi"}}},
		{"memory garbage", "memory: 64Mi", "memory: 64MB",
			[]wantErr{{lineWebMemory, "classes[0].resources.memory", "not a memory quantity"}}},
		{"memory absurd", "memory: 64Mi", "memory: 32Ti",
			[]wantErr{{lineWebMemory, "classes[0].resources.memory", "more than 16Ti"}}},
		{"resources missing", "    resources:\n      cpu: 100m\n      memory: 64Mi\n", "",
			[]wantErr{{5, "classes[0].resources.cpu", "cpu is required"}, {5, "classes[0].resources.memory", "memory is required"}}},
		{"port range", "- port: 80", "- port: 70000",
			[]wantErr{{lineWebPort, "classes[0].ports[0].port", "between 1 and 65535, got 70000"}}},
		{"port protocol", "- port: 80", "- port: 80\n        protocol: sctp",
			[]wantErr{{15, "classes[0].ports[0].protocol", `tcp or udp, got "sctp"`}}},
		{"port duplicate", "- port: 80", "- port: 80\n      - port: 80\n        protocol: tcp",
			[]wantErr{{15, "classes[0].ports[1].port", "80/tcp is listed twice (also classes[0].ports[0] (line 14))"}}},
		{"port same number other protocol", "- port: 80", "- port: 80\n      - port: 80\n        protocol: udp", nil},
		{"spreadBy", "spreadBy: zone", "spreadBy: 'zone name'",
			[]wantErr{{lineAppSpread, "classes[1].placement.spreadBy", "not a label key"}}},
		{"spreadBy prefixed", "spreadBy: zone", "spreadBy: topology.example.com/zone", nil},
		{"placement label", "spreadBy: zone", "labels:\n        -bad: x",
			[]wantErr{{lineAppSpread + 1, "classes[1].placement.labels.-bad", "label key"}}},
		{"rule unknown from", "- from: web", "- from: api",
			[]wantErr{{lineRule0, "rules[0].from", `class "api" is not defined in this app (classes: app, db, web)`}}},
		{"rule unknown to", "to: app\n    ports: [8080]", "to: ap\n    ports: [8080]",
			[]wantErr{{lineRule0To, "rules[0].to", `class "ap" is not defined`}}},
		{"rule missing from", "  - from: web\n    to: app", "  - to: app",
			[]wantErr{{lineRule0, "rules[0].from", "from is required"}}},
		{"rule no ports", "ports: [8080]", "ports: []",
			[]wantErr{{lineRule0Ports, "rules[0].ports", "at least one port"}}},
		{"rule port range", "ports: [8080]", "ports: [8080, 0]",
			[]wantErr{{lineRule0Ports, "rules[0].ports[1]", "between 1 and 65535, got 0"}}},
		{"rule port duplicate", "ports: [8080]", "ports: [8080, 9090, 8080]",
			[]wantErr{{lineRule0Ports, "rules[0].ports[2]", "8080 is listed twice in this rule"}}},
		{"rule port not a number", "ports: [8080]", "ports: [http]",
			[]wantErr{{lineRule0Ports, "rules[0].ports[0]", "expected a whole number"}}},
		{"rule protocol", "ports: [8080]", "ports: [8080]\n    protocol: icmp",
			[]wantErr{{39, "rules[0].protocol", "tcp or udp"}}},
		{"rule encrypt missing", "    encrypt: false\n", "",
			[]wantErr{{lineRule0, "rules[0].encrypt", "encrypt is required"}}},
		{"rule encrypt yes", "encrypt: false", "encrypt: no",
			[]wantErr{{lineRule0Enc, "rules[0].encrypt", `expected true or false, got "no"`}}},
		{"duplicate rule", "    encrypt: true\n", "    encrypt: true\n  - from: web\n    to: app\n    ports: [9090, 8080]\n    encrypt: false\n",
			[]wantErr{{46, "rules[2].ports[1]", "duplicate rule: web -> app tcp/8080 is already allowed by rules[0].ports[0] (line 38)"}}},
		{"same port other protocol", "    encrypt: true\n", "    encrypt: true\n  - from: web\n    to: app\n    ports: [8080]\n    protocol: udp\n    encrypt: false\n", nil},
		{"encrypt conflict", "    encrypt: true\n", "    encrypt: true\n  - from: web\n    to: app\n    ports: [9090]\n    encrypt: true\n",
			[]wantErr{{47, "rules[2].encrypt", "encrypt: true conflicts with encrypt: false of rules[0] (line 36), a rule between the same classes app and web"}}},
		{"encrypt conflict reverse", "    encrypt: true\n", "    encrypt: true\n  - from: db\n    to: app\n    ports: [7000]\n    encrypt: false\n",
			[]wantErr{{47, "rules[2].encrypt", "encrypt: false conflicts with encrypt: true of rules[1] (line 40), a rule between the same classes app and db: traffic between a class pair is either all encrypted or all plain"}}},
		{"self rule", "    encrypt: true\n", "    encrypt: true\n  - from: db\n    to: db\n    ports: [7000]\n    encrypt: true\n", nil},
		{"self rule conflict", "    encrypt: true\n", "    encrypt: true\n  - from: db\n    to: db\n    ports: [7000]\n    encrypt: true\n  - from: db\n    to: db\n    ports: [7001]\n    encrypt: false\n",
			[]wantErr{{51, "rules[3].encrypt", "of rules[2] (line 44), a rule between the same classes db and db"}}},
		{"network", "name: shop", "name: shop\nnetwork: 100.64.1.0/24", nil},
		{"network private", "name: shop", "name: shop\nnetwork: 10.20.0.0/16", nil},
		{"network host bits", "name: shop", "name: shop\nnetwork: 100.64.1.5/24",
			[]wantErr{{4, "network", "did you mean 100.64.1.0/24?"}}},
		{"network garbage", "name: shop", "name: shop\nnetwork: 100.64.1/24",
			[]wantErr{{4, "network", "not an IPv4 prefix"}}},
		{"network ipv6", "name: shop", "name: shop\nnetwork: fd00::/64",
			[]wantErr{{4, "network", "must be an IPv4 prefix"}}},
		{"network too small", "name: shop", "name: shop\nnetwork: 100.64.1.0/30",
			[]wantErr{{4, "network", "has 2 usable addresses but the app runs 5 tasks: use a /29 or larger"}}},
		{"network exactly big enough", "name: shop", "name: shop\nnetwork: 100.64.1.0/29", nil},
		{"network /32", "name: shop", "name: shop\nnetwork: 100.64.1.1/32",
			[]wantErr{{4, "network", "0 usable addresses"}}},
		{"string where mapping", "    guest:\n      runtime: vm\n      kernel: /boot/vmlinux\n", "    guest: vm\n",
			// The guest failed to decode: no second complaint about its runtime.
			[]wantErr{{29, "classes[2].guest", `expected a mapping, got "vm"`}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := edit(t, baseApp, tc.old, tc.new)
			apps, err := DecodeApps("shop.yaml", []byte(in))
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if len(apps) != 1 {
					t.Fatalf("got %d apps", len(apps))
				}
				return
			}
			if apps != nil {
				t.Errorf("apps returned with an error: %+v", apps)
			}
			checkErrs(t, "shop.yaml", err, tc.want)
		})
	}
}

func TestAppLimits(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: corridor/v1\nkind: App\nname: big\nclasses:\n")
	for i := range MaxClasses + 1 {
		fmt.Fprintf(&b, "  - {name: c%d, tasks: 1000, guest: {runtime: netns, command: [a]}, resources: {cpu: 1, memory: 4Mi}}\n", i)
	}
	b.WriteString("rules:\n")
	for i := range MaxRules + 1 {
		fmt.Fprintf(&b, "  - {from: c0, to: c1, ports: [%d], encrypt: true}\n", i+1)
	}
	_, err := DecodeApps("big.yaml", []byte(b.String()))
	checkErrs(t, "big.yaml", err, []wantErr{
		{lineClasses, "classes", "at most 100 classes, got 101"},
		{lineClasses, "classes", "at most 10000 tasks, got 101000"},
		{lineClasses + MaxClasses + 2, "rules", "at most 1000 rules, got 1001"},
	})
}

// Every problem is reported, not only the first, sorted by line.
func TestAllErrorsReported(t *testing.T) {
	in := edit(t, baseApp, "name: shop", "name: Shop")
	in = edit(t, in, "cpu: 100m", "cpu: lots")
	in = edit(t, in, "- from: web", "- from: nobody")
	_, err := DecodeApps("x.yaml", []byte(in))
	list, ok := AsErrorList(err)
	if !ok || len(list) != 3 {
		t.Fatalf("want 3 errors, got %v", err)
	}
	for i, line := range []int{lineName, lineWebCPU, lineRule0} {
		if list[i].Line != line {
			t.Errorf("error %d at line %d, want %d (sorted): %v", i, list[i].Line, line, list[i])
		}
	}
	if !strings.HasPrefix(err.Error(), "3 errors:\nx.yaml:3:1: name: ") {
		t.Errorf("ErrorList prints as %q", err.Error())
	}
	var one *Error
	if !errors.As(err, &one) || one.Line != lineName {
		t.Errorf("errors.As to *Error: %v", one)
	}
}

func TestMultiDocument(t *testing.T) {
	second := strings.ReplaceAll(baseApp, "name: shop", "name: shop2")
	in := "---\n" + baseApp + "---\n" + second + "---\n"
	apps, err := DecodeApps("two.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(apps) != 2 || apps[0].Name != "shop" || apps[1].Name != "shop2" {
		t.Fatalf("got %+v", apps)
	}

	// Duplicate names and overlapping networks across documents; lines
	// count from the start of the stream.
	a := edit(t, baseApp, "name: shop", "name: shop\nnetwork: 100.64.0.0/16")
	b := edit(t, baseApp, "name: shop", "name: shop\nnetwork: 100.64.8.0/24")
	secondStart := strings.Count(a, "\n") + 1 // the "---" line
	_, err = DecodeApps("dup.yaml", []byte(a+"---\n"+b))
	checkErrs(t, "dup.yaml", err, []wantErr{
		{secondStart + lineName, "name", `app "shop" is defined twice (also at dup.yaml:3)`},
		{secondStart + 4, "network", `network 100.64.8.0/24 of app "shop" overlaps network 100.64.0.0/16 of app "shop" (dup.yaml:4)`},
	})

	// An error in the second document is reported with its own line, and
	// the first document's are reported too.
	b = edit(t, second, "tasks: 1\n", "tasks: -5\n")
	a = edit(t, baseApp, "cpu: 100m", "cpu: 0")
	start := strings.Count(a, "\n") + 1
	_, err = DecodeApps("two.yaml", []byte(a+"---\n"+b))
	checkErrs(t, "two.yaml", err, []wantErr{
		{lineWebCPU, "classes[0].resources.cpu", "cpu is required"},
		{start + 28, "classes[2].tasks", "must not be negative"},
	})
}

func TestFileErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		line int
		msg  string
	}{
		{"empty", "", 0, "file is empty: expected a kind: App document"},
		{"comments only", "# nothing\n\n", 0, "file is empty"},
		{"separators only", "---\n---\n", 0, "file is empty"},
		{"not yaml", "apiVersion: corridor/v1\nkind: App\nclasses: [\n", 3, "invalid YAML"},
		{"bad indentation", "kind: App\n  name: x\n name: y\n", 2, "invalid YAML"},
		{"tabs", "kind: App\n\tname: x\n", 2, "invalid YAML"},
		{"binary", "\x00\x01\x02", 0, "invalid YAML"},
		{"list", "- a\n- b\n", 1, "expected a mapping with apiVersion, kind"},
		{"scalar", "hello\n", 1, "expected a mapping"},
		{"no kind", "apiVersion: corridor/v1\nname: x\n", 1, "kind is required: this file must hold kind: App documents"},
		{"wrong kind", "apiVersion: corridor/v1\nkind: ServerList\nservers: []\n", 2, `kind must be App, got "ServerList"`},
		{"alias", "apiVersion: corridor/v1\nkind: App\nname: x\nclasses:\n  - *c\n", 0, "invalid YAML"},
		{"anchor and alias", "apiVersion: corridor/v1\nkind: App\nname: &n x\nclasses: [*n]\n", 3, "YAML anchors are not allowed"},
		{"custom tag", "apiVersion: corridor/v1\nkind: App\nname: !secret x\n", 3, `YAML tag "!secret" is not allowed`},
		{"too large", "kind: App\n" + strings.Repeat("#", MaxFileSize), 0, "more than the limit of 1048576 bytes"},
		{"too many documents", strings.Repeat("kind: App\n---\n", MaxDocuments+1), 201, "more than 100 documents"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			apps, err := DecodeApps("f.yaml", []byte(tc.in))
			if err == nil || apps != nil {
				t.Fatalf("got %v, %v; want an error", apps, err)
			}
			list, ok := AsErrorList(err)
			if !ok {
				t.Fatalf("%T is not an ErrorList", err)
			}
			found := false
			for _, e := range list {
				if e.Line == tc.line && strings.Contains(e.Msg, tc.msg) && e.File == "f.yaml" {
					found = true
				}
			}
			if !found {
				t.Errorf("want an error at line %d containing %q, got:\n%v", tc.line, tc.msg, err)
			}
		})
	}
}

// The alias check fires on the alias itself, with its line.
func TestAliasRejected(t *testing.T) {
	in := "apiVersion: corridor/v1\nkind: App\nname: x\nclasses:\n  - &c {name: a}\n  - *c\n"
	_, err := DecodeApps("a.yaml", []byte(in))
	checkErrs(t, "a.yaml", err, []wantErr{
		{5, "", "YAML anchors are not allowed"},
		{6, "", "YAML aliases are not allowed"},
	})
	// An alias bomb: without expansion it costs nothing to reject.
	bomb := "a: &a [x, x, x, x, x, x, x, x, x]\n"
	prev := "a"
	for _, n := range []string{"b", "c", "d", "e", "f", "g", "h", "i"} {
		bomb += n + ": &" + n + " [" + strings.Repeat("*"+prev+", ", 8) + "*" + prev + "]\n"
		prev = n
	}
	if _, err := DecodeApps("bomb.yaml", []byte("kind: App\n"+bomb)); err == nil || !strings.Contains(err.Error(), "YAML aliases are not allowed") {
		t.Errorf("alias bomb: %v", err)
	}
}

func TestErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{File: "f.yaml", Line: 3, Column: 7, Field: "classes[1].tasks", Msg: "bad"}, "f.yaml:3:7: classes[1].tasks: bad"},
		{Error{File: "f.yaml", Line: 3, Msg: "bad"}, "f.yaml:3: bad"},
		{Error{File: "f.yaml", Msg: "file is empty"}, "f.yaml: file is empty"},
		{Error{Field: "rules[0].ports[2]", Msg: "bad"}, "rules[0].ports[2]: bad"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	if ErrorList(nil).Err() != nil {
		t.Error("empty ErrorList.Err() is not nil")
	}
}

// ValidateApp works on an app that came as JSON: no lines, same fields.
func TestValidateAppWithoutFile(t *testing.T) {
	apps, err := DecodeApps("base.yaml", []byte(baseApp))
	if err != nil {
		t.Fatal(err)
	}
	a := apps[0]
	if errs := ValidateApp(&a); errs != nil {
		t.Fatalf("valid app: %v", errs)
	}
	a.Classes = append([]Class(nil), a.Classes...)
	a.Classes[1].Tasks = -1
	a.Rules = append([]Rule(nil), a.Rules...)
	a.Rules[0].Protocol = "" // empty counts as tcp
	a.Rules[1].To = "nope"
	errs := ValidateApp(&a)
	if len(errs) != 2 {
		t.Fatalf("want 2 errors, got %v", errs)
	}
	if got := errs[0].Error(); got != "classes[1].tasks: tasks must not be negative, got -1" {
		t.Errorf("got %q", got)
	}
	if errs[1].Field != "rules[1].to" || errs[1].Line != 0 || errs[1].File != "" {
		t.Errorf("got %+v", errs[1])
	}

	b := apps[0]
	b.Network = "100.64.0.0/24"
	c := apps[0]
	c.Network = "100.64.0.128/25"
	errs = ValidateApps([]App{b, c})
	if len(errs) != 2 || !strings.Contains(errs[0].Error(), `name: app "shop" is defined twice (also at apps[0])`) ||
		!strings.Contains(errs[1].Error(), "overlaps network 100.64.0.0/24") {
		t.Errorf("cross-app: %v", errs)
	}
}

func TestParseUserAndCapacityPids(t *testing.T) {
	for in, want := range map[string][2]uint32{"1000": {1000, 1000}, "70000:70001": {70000, 70001}, "4294967294": {4294967294, 4294967294}} {
		uid, gid, err := ParseUser(in)
		if err != nil || uid != want[0] || gid != want[1] {
			t.Errorf("ParseUser(%q) = %d, %d, %v; want %v", in, uid, gid, err, want)
		}
	}
	for _, in := range []string{"", "x", "0", "1:0", "-1", "1:", ":1", "4294967295", "1000:4294967296", " 1"} {
		if _, _, err := ParseUser(in); err == nil {
			t.Errorf("ParseUser(%q): no error", in)
		}
	}
	errs := ValidateServers([]Server{{Name: "s1", Address: "198.18.0.11", Capacity: Resources{CPU: 1000, Memory: 1 << 30, Pids: 100}}})
	if len(errs) != 1 || !strings.Contains(errs.Error(), "servers[0].capacity.pids") {
		t.Errorf("capacity.pids: %v", errs)
	}
}
