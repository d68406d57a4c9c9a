package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/guest/vm"
	"github.com/corridor-dev/corridor/internal/lab"
	"github.com/corridor-dev/corridor/internal/vmhost"
)

// addHostsFlags adds the flags that choose what a lab's servers are
// (lab up, demo): namespaces, or QEMU VM hosts with kernels of their own.
func addHostsFlags(cmd *cobra.Command, o *lab.Options) {
	f := cmd.Flags()
	f.StringVar(&o.Hosts, "hosts", lab.HostsNetns, "what each server is: netns (a network namespace of this machine, fast) or vm (a QEMU VM booting a Debian kernel, running the corridor package: give --package)")
	f.StringVar(&o.VM.Package, "package", "", "vm hosts: the corridor Debian package they run (`make dist` builds bin/corridor_VERSION_amd64.deb)")
	f.StringVar(&o.VM.KernelDeb, "kernel-deb", "", "vm hosts: a local kernel package (default: linux-image-amd64, fetched with apt-get download)")
	f.StringVar(&o.VM.CacheDir, "kernel-cache", "", "vm hosts: where the kernel package is downloaded (default /var/cache/corridor/debs)")
	f.StringVar(&o.VM.ImageDir, "vm-image-dir", vmhost.DefaultImageDir, "vm hosts: where the VM host image is built and cached")
	f.StringVar(&o.VM.KVM, "kvm", vm.KVMAuto, "vm hosts: auto (KVM if a probe boot works, else TCG), on or off")
	f.IntVar(&o.VM.Memory, "vm-memory", vmhost.DefaultMemory, "vm hosts: memory of each VM in MiB")
	wgGo := f.String("wireguard-go", "last", `vm hosts: servers whose VM boots with the wireguard module withheld, so that their agent runs wireguard-go (comma-separated; "last": the last server; "none")`)
	cmd.PreRunE = chainPreRun(cmd.PreRunE, func(cmd *cobra.Command, _ []string) error {
		if o.Hosts != lab.HostsVM {
			for _, n := range []string{"package", "kernel-deb", "kvm", "vm-memory", "wireguard-go"} {
				if cmd.Flags().Changed(n) {
					return fmt.Errorf("--%s is for --hosts vm", n)
				}
			}
			return nil
		}
		// A mixed fleet by default: kernel WireGuard and wireguard-go
		// must interoperate.
		o.VM.WireGuardGo = wireGuardGoHosts(*wgGo, o.Servers)
		return nil
	})
}

func chainPreRun(a, b func(*cobra.Command, []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if a != nil {
			if err := a(cmd, args); err != nil {
				return err
			}
		}
		return b(cmd, args)
	}
}

// wireGuardGoHosts resolves --wireguard-go: server names, "last" or
// "none".
func wireGuardGoHosts(s string, servers int) []string {
	var out []string
	for _, n := range strings.Split(s, ",") {
		switch n = strings.TrimSpace(n); n {
		case "", "none":
		case "last":
			if servers == 0 {
				servers = lab.DefaultServers
			}
			if servers > 1 {
				out = append(out, "s"+strconv.Itoa(servers))
			}
		default:
			out = append(out, n)
		}
	}
	return out
}

// demoShopRequestVM sends one order through the shop's web tier from the
// lab's outside client (the web tasks run inside VM hosts), to the
// published port of the first server, and shows which tasks served it.
func demoShopRequestVM(ctx context.Context, w io.Writer, l *lab.Lab) error {
	if l.OutsideClient == nil || len(l.Servers) == 0 {
		return errors.New("the lab has no outside client")
	}
	to := netip.AddrPortFrom(l.Servers[0].Address, 80)
	r, err := l.Request(ctx, lab.IngressRequest{From: l.OutsideClient.Allowed, To: to, Path: "/api/summary",
		Marker: []byte("corridor-demo"), Timeout: 10 * time.Second})
	if err != nil {
		return err
	}
	if !r.Connected || !strings.Contains(r.Status, "200") {
		return fmt.Errorf("GET http://%s/api/summary from %s: connected %v, %s", to, l.OutsideClient.Allowed, r.Connected, r.Status)
	}
	var sum struct {
		ServedBy   map[string]string `json:"servedBy"`
		OrderCount int               `json:"orderCount"`
	}
	if err := json.Unmarshal([]byte(r.Body), &sum); err != nil {
		return fmt.Errorf("GET /api/summary: %w", err)
	}
	fmt.Fprintf(w, "\na request to the web tier (from the outside client, to %s): served by web %s -> app %s (plain) -> db %s (encrypted)\n",
		to, sum.ServedBy["web"], sum.ServedBy["app"], sum.ServedBy["db"])
	return nil
}
