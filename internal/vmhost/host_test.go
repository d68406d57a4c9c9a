package vmhost

import (
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/dist"
	"github.com/corridor-dev/corridor/internal/guest/vm"
)

func testHost() *Host {
	return &Host{Name: "s2", Dir: "/lab/vm/s2", Address: netip.MustParsePrefix("198.18.116.12/24"),
		Gateway: netip.MustParseAddr("198.18.116.2"), MTU: 1500, Tap: "cor-vm2", MAC: MAC(2),
		Routes:    []Route{{Dst: netip.MustParsePrefix("203.0.113.0/24"), Via: netip.MustParseAddr("198.18.116.7")}},
		WireGuard: WireGuardWithheld}
}

// The init reads /etc/vmhost.conf as shell assignments: every setting of
// the host is there, quoted.
func TestConf(t *testing.T) {
	im := &Image{Modules: []string{"tun", "wireguard"}}
	got := string(testHost().conf(im))
	for _, want := range []string{
		"VMHOST_NAME='s2'\n", "VMHOST_ADDR='198.18.116.12/24'\n", "VMHOST_GW='198.18.116.2'\n",
		"VMHOST_ROUTES='203.0.113.0/24@198.18.116.7'\n", "VMHOST_WIREGUARD='withheld'\n", "VMHOST_MODULES='tun wireguard'\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("conf lacks %q:\n%s", want, got)
		}
	}
	for _, v := range regexp.MustCompile(`(?m)^VMHOST_[A-Z]+=`).FindAllString(got, -1) {
		if !strings.Contains(string(initScript), "$"+strings.TrimSuffix(v, "=")) {
			t.Errorf("the init never reads %s", strings.TrimSuffix(v, "="))
		}
	}
}

// QEMU boots the image's kernel with the host's own initramfs, its tap,
// its state disk and its console; KVM only when chosen.
func TestCommand(t *testing.T) {
	h := testHost()
	im := &Image{Dir: "/cache"}
	tcg := strings.Join(h.Command("qemu", im, vm.AccelTCG), " ")
	for _, want := range []string{"-accel tcg", "-kernel /cache/vmlinux", "-initrd /lab/vm/s2/initrd.cpio",
		"ifname=cor-vm2,", "mac=52:54:00:c0:00:02", "file=/lab/vm/s2/state.img,if=virtio", "path=/lab/vm/s2/console.log,append=on", "-no-reboot"} {
		if !strings.Contains(tcg, want) {
			t.Errorf("command lacks %q: %s", want, tcg)
		}
	}
	if strings.Contains(tcg, "kvm") {
		t.Errorf("a TCG host asks for KVM: %s", tcg)
	}
	if kvm := h.Command("qemu", im, vm.AccelKVM); !slices.Contains(kvm, "-enable-kvm") {
		t.Errorf("a KVM host does not enable it: %v", kvm)
	}
}

func TestConsoleCount(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	log := "corridor-vmhost: agent exited with status 1\r\nnoise\r\ncorridor-vmhost: agent exited with status 2\r\n"
	if err := os.WriteFile(p, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	if n := ConsoleCount(p, 0, AgentExitLine); n != 2 {
		t.Fatalf("count from 0: %d, want 2", n)
	}
	if n := ConsoleCount(p, int64(strings.Index(log, "noise")), AgentExitLine); n != 1 {
		t.Fatalf("count from the second line: %d, want 1", n)
	}
}

// The init starts the agent from the unit the package installs, as
// systemd would: the unit is where the init looks, and holds the
// settings the init reads.
func TestInitRunsThePackagesUnit(t *testing.T) {
	unit := dist.UnitDir + "/" + dist.AgentUnit
	if !strings.Contains(string(initScript), "unit="+unit) {
		t.Fatalf("the init does not read %s", unit)
	}
	b, err := os.ReadFile(filepath.Join("..", "..", dist.SourceDir, dist.AgentUnit))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"ExecStart", "Restart", "RestartSec", "UMask", "StateDirectory"} {
		if !regexp.MustCompile(`(?m)^` + key + `=\S`).Match(b) {
			t.Errorf("%s has no %s= line for the init to follow", dist.AgentUnit, key)
		}
		if key != "Restart" && !strings.Contains(string(initScript), "^"+key+"=") {
			t.Errorf("the init ignores %s=", key)
		}
	}
	if !regexp.MustCompile(`(?m)^Restart=always$`).Match(b) {
		t.Errorf("the unit's Restart= is not always, which the init's loop implements")
	}
}
