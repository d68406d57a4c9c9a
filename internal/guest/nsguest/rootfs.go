package nsguest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/corridor-dev/corridor/internal/artifact"
	"github.com/corridor-dev/corridor/internal/compile"
	"golang.org/x/sys/unix"
)

// etcFiles are the host's files copied into the guest's /etc (symlinks
// kept as symlinks, except resolv.conf, whose content is copied): what
// name resolution, the dynamic linker and time zones need. Missing ones
// are skipped.
var etcFiles = []string{
	"resolv.conf", "nsswitch.conf", "host.conf", "gai.conf", "services", "protocols",
	"ld.so.cache", "ld.so.conf", "localtime", "timezone", "os-release", "debian_version",
	"mime.types", "mailcap",
}

// etcDirs are the host's directories bound read-only into the guest's
// /etc: TLS roots, the linker's search path, Debian's alternatives (many
// programs in /usr/bin are links through /etc/alternatives) and terminfo.
var etcDirs = []string{"ssl", "ca-certificates", "ld.so.conf.d", "alternatives", "terminfo"}

// devNodes are the host's device nodes bound into the guest's /dev.
var devNodes = []string{"null", "zero", "full", "random", "urandom", "tty"}

// procReadOnly are the /proc entries made read-only in the guest (the
// task's uid cannot write them anyway; this is a second lock).
var procReadOnly = []string{"sys", "sysrq-trigger", "irq", "bus"}

func mountErr(what string, err error) error {
	return fmt.Errorf("%w: %s: %w", errSealed, what, err)
}

// bindRO binds src on dst (which must exist) and makes it read-only,
// nosuid and nodev.
func bindRO(src, dst string) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return mountErr("bind "+src, err)
	}
	if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return mountErr("read-only "+src, err)
	}
	return nil
}

// touch makes an empty file at p (a mount point for a file).
func touch(p string) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return mountErr("create "+p, err)
	}
	return f.Close()
}

func tmpfs(dst, opts string, flags uintptr) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return mountErr("create "+dst, err)
	}
	if err := unix.Mount("tmpfs", dst, "tmpfs", flags, opts); err != nil {
		return mountErr("tmpfs on "+dst, err)
	}
	return nil
}

// buildRoot makes the guest's root on sb.Root, in guest-init's own mount
// namespace. Nothing of it propagates to the host.
func buildRoot(sb sandbox) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return mountErr("make mounts private", err)
	}
	r := sb.Root
	if err := tmpfs(r, "mode=755,size=4m", unix.MS_NOSUID|unix.MS_NODEV); err != nil {
		return err
	}
	for _, d := range visibleDirs {
		host := "/" + d
		fi, err := os.Lstat(host)
		switch {
		case err != nil:
			continue
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(host)
			if err != nil {
				return mountErr("read link "+host, err)
			}
			if err := os.Symlink(target, filepath.Join(r, d)); err != nil {
				return mountErr("link "+d, err)
			}
		case fi.IsDir():
			if err := os.Mkdir(filepath.Join(r, d), 0o755); err != nil {
				return mountErr("create "+d, err)
			}
			if err := bindRO(host, filepath.Join(r, d)); err != nil {
				return err
			}
		}
	}
	if err := buildEtc(sb, filepath.Join(r, "etc")); err != nil {
		return err
	}
	if err := buildDev(filepath.Join(r, "dev")); err != nil {
		return err
	}
	proc := filepath.Join(r, "proc")
	if err := os.Mkdir(proc, 0o555); err != nil {
		return mountErr("create /proc", err)
	}
	// This process is the init of a new PID namespace: the proc mounted
	// here shows that namespace's processes only.
	if err := unix.Mount("proc", proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return mountErr("mount /proc", err)
	}
	for _, e := range procReadOnly {
		p := filepath.Join(proc, e)
		if _, err := os.Stat(p); err == nil {
			if err := bindRO(p, p); err != nil {
				return err
			}
		}
	}
	if err := tmpfs(filepath.Join(r, "tmp"), "mode=1777", unix.MS_NOSUID|unix.MS_NODEV); err != nil {
		return err
	}
	if err := tmpfs(filepath.Join(r, "run"), fmt.Sprintf("mode=755,uid=%d,gid=%d", sb.UID, sb.GID), unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(r, "var"), 0o755); err != nil {
		return mountErr("create /var", err)
	}
	for link, target := range map[string]string{"var/tmp": "../tmp", "var/run": "../run", "home": GuestDataDir} {
		if err := os.Symlink(target, filepath.Join(r, link)); err != nil {
			return mountErr("link /"+link, err)
		}
	}
	data := filepath.Join(r, GuestDataDir)
	if err := os.Mkdir(data, 0o700); err != nil {
		return mountErr("create "+GuestDataDir, err)
	}
	if err := unix.Mount(sb.Data, data, "", unix.MS_BIND, ""); err != nil {
		return mountErr("bind the data directory", err)
	}
	if err := unix.Mount("", data, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return mountErr("nosuid,nodev on the data directory", err)
	}
	// Last: the program, when no directory above shows it. Its parent
	// directories are made in whichever tmpfs holds them (/ or /tmp).
	if tree, ok := artifact.TreeOf(sb.Exe); ok && !visibleInGuest(sb.Exe) {
		// An archive's program: its whole unpacked tree, at its path.
		dst := filepath.Join(r, tree)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return mountErr("create the artifact's directory", err)
		}
		if err := bindRO(tree, dst); err != nil {
			return err
		}
	} else if !visibleInGuest(sb.Exe) {
		dst := filepath.Join(r, sb.Exe)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return mountErr("create the program's directory", err)
		}
		if err := touch(dst); err != nil {
			return err
		}
		if err := bindRO(sb.Exe, dst); err != nil {
			return err
		}
	}
	return nil
}

// buildEtc writes the guest's /etc: copies of etcFiles, binds of etcDirs,
// and passwd, group, hosts and hostname made for the task, in a tmpfs
// made read-only once written.
func buildEtc(sb sandbox, etc string) error {
	if err := tmpfs(etc, "mode=755,size=1m", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC); err != nil {
		return err
	}
	for _, name := range etcFiles {
		host := filepath.Join("/etc", name)
		fi, err := os.Lstat(host)
		if err != nil {
			continue
		}
		dst := filepath.Join(etc, name)
		if name == "resolv.conf" && len(sb.Resolvers) > 0 {
			continue // the task's own, below
		}
		if fi.Mode()&os.ModeSymlink != 0 && name != "resolv.conf" {
			target, err := os.Readlink(host)
			if err != nil {
				return mountErr("read link "+host, err)
			}
			if err := os.Symlink(target, dst); err != nil {
				return mountErr("link /etc/"+name, err)
			}
			continue
		}
		b, err := os.ReadFile(host)
		if err != nil {
			continue // a dangling resolv.conf link, say
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			return mountErr("write /etc/"+name, err)
		}
	}
	for _, name := range etcDirs {
		host := filepath.Join("/etc", name)
		if fi, err := os.Stat(host); err != nil || !fi.IsDir() {
			continue
		}
		dst := filepath.Join(etc, name)
		if err := os.Mkdir(dst, 0o755); err != nil {
			return mountErr("create /etc/"+name, err)
		}
		if err := bindRO(host, dst); err != nil {
			return err
		}
	}
	files := map[string]string{
		"passwd": fmt.Sprintf("root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\ntask:x:%d:%d:corridor task:/:/bin/sh\n", sb.UID, sb.GID),
		"group":  fmt.Sprintf("root:x:0:\nnogroup:x:65534:\ntask:x:%d:\n", sb.GID),
		"hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" +
			strings.TrimSpace(sb.Address+"\t"+sb.Hostname) + "\n",
		"hostname": sb.Hostname + "\n",
	}
	if len(sb.Resolvers) > 0 {
		files["resolv.conf"] = resolvConf(sb.Resolvers)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(content), 0o644); err != nil {
			return mountErr("write /etc/"+name, err)
		}
	}
	if err := unix.Mount("", etc, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=755,size=1m"); err != nil {
		return mountErr("read-only /etc", err)
	}
	return nil
}

// buildDev makes a minimal /dev: a few host nodes, a devpts of its own,
// the fd links and a private /dev/shm.
func buildDev(dev string) error {
	if err := tmpfs(dev, "mode=755,size=64k", unix.MS_NOSUID|unix.MS_NOEXEC); err != nil {
		return err
	}
	for _, n := range devNodes {
		host := filepath.Join("/dev", n)
		if _, err := os.Stat(host); err != nil {
			continue
		}
		dst := filepath.Join(dev, n)
		if err := touch(dst); err != nil {
			return err
		}
		if err := unix.Mount(host, dst, "", unix.MS_BIND, ""); err != nil {
			return mountErr("bind "+host, err)
		}
	}
	for link, target := range map[string]string{
		"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
		"stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx",
	} {
		if err := os.Symlink(target, filepath.Join(dev, link)); err != nil {
			return mountErr("link /dev/"+link, err)
		}
	}
	pts := filepath.Join(dev, "pts")
	if err := os.Mkdir(pts, 0o755); err != nil {
		return mountErr("create /dev/pts", err)
	}
	if err := unix.Mount("devpts", pts, "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return mountErr("devpts", err)
	}
	if err := tmpfs(filepath.Join(dev, "shm"), "mode=1777", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC); err != nil {
		return err
	}
	if err := unix.Mount("", dev, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NOEXEC, "mode=755,size=64k"); err != nil {
		return mountErr("read-only /dev", err)
	}
	return nil
}

// pivot makes root the root of this mount namespace and detaches the
// host's tree from it (pivot_root(".", "."), as runc does), then makes the
// new root read-only.
func pivot(root string) error {
	if err := unix.Chdir(root); err != nil {
		return mountErr("chdir to the new root", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return mountErr("pivot_root", err)
	}
	// The old root is now stacked on "."; detach it.
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return mountErr("detach the host's root", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return mountErr("chdir /", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, "mode=755,size=4m"); err != nil {
		return mountErr("read-only root", err)
	}
	return nil
}

// resolvConf is the guest's /etc/resolv.conf for the task's resolvers
// (the app's spec resolvers, at most 3, as the resolver reads).
func resolvConf(resolvers []string) string {
	var b strings.Builder
	b.WriteString("# written by corridor: the app's resolvers\n")
	for _, r := range resolvers {
		fmt.Fprintf(&b, "nameserver %s\n", r)
	}
	return b.String()
}

// resolverList is the task's resolvers as text; nil when it has none.
func resolverList(g compile.Guest) []string {
	var out []string
	for _, a := range g.Resolvers {
		out = append(out, a.String())
	}
	return out
}
