package vmhost

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/corridor-dev/corridor/internal/dist"
	"github.com/corridor-dev/corridor/internal/image"
)

//go:embed init.sh
var initScript []byte

// Defaults of ImageConfig.
const (
	DefaultImageDir = "/var/cache/corridor/vmhost"
	// imageFormat changes whenever what BuildImage writes changes.
	imageFormat  = "corridor-vmhost-image/1"
	manifestFile = "vmhost-image.json"
	baseInitrd   = "host-base.cpio"
	probeInitrd  = "probe.cpio"
)

// Modules are loaded at boot by the host init, with their dependencies:
// the virtio devices, the state disk's ext4, and what the agent's data
// plane and guests need. The image also carries every netfilter module
// (netfilterDirs), which the kernel loads on demand (nft expressions).
var Modules = []string{
	"virtio_pci", "virtio_net", "virtio_blk", "ext4", "crc32c_generic", "af_packet",
	"tun", "veth", "vxlan", "bridge", "wireguard", "nf_tables", "nf_conntrack",
	// netlink handles open an XFRM socket too.
	"xfrm_user",
}

var netfilterDirs = []string{"kernel/net/netfilter", "kernel/net/ipv4/netfilter", "kernel/net/ipv6/netfilter"}

// ImageConfig says what a VM host image is built from. Zero values take
// the defaults.
type ImageConfig struct {
	// Out caches the built image (vmlinux, the base initramfs, its
	// manifest); an image built from the same inputs is reused.
	Out string
	// KernelDeb is a local kernel package; empty: KernelPackage
	// (linux-image-amd64) is fetched with apt-get download into CacheDir.
	KernelDeb     string
	KernelPackage string
	CacheDir      string
	// Package is the corridor Debian package (`make dist`) installed into
	// the image with dpkg. Required.
	Package string
	// Busybox is a statically linked busybox (busybox-static).
	Busybox string
	Logger  *slog.Logger
}

// Image is a built VM host image.
type Image struct {
	Dir           string    `json:"-"`
	Format        string    `json:"format"`
	Hash          string    `json:"hash"`
	KernelVersion string    `json:"kernelVersion"`
	KernelPackage string    `json:"kernelPackage"`
	Package       string    `json:"package"` // the corridor .deb's file name
	Modules       []string  `json:"modules"` // loaded at boot, in order
	Built         time.Time `json:"built"`
}

// Kernel is the ELF kernel QEMU boots.
func (im *Image) Kernel() string { return filepath.Join(im.Dir, image.KernelFile) }

// BaseInitrd is the initramfs every host shares.
func (im *Image) BaseInitrd() string { return filepath.Join(im.Dir, baseInitrd) }

// ProbeInitrd is a small initramfs (busybox and the init) for the KVM
// probe boot.
func (im *Image) ProbeInitrd() string { return filepath.Join(im.Dir, probeInitrd) }

func (c *ImageConfig) defaults() error {
	if c.Out == "" {
		c.Out = DefaultImageDir
	}
	if c.CacheDir == "" {
		c.CacheDir = image.DefaultCacheDir
	}
	if c.Busybox == "" {
		c.Busybox = image.DefaultBusybox
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Package == "" {
		return errors.New("vmhost: no corridor package: build it with `make dist` (bin/corridor_VERSION_amd64.deb) and give its path")
	}
	for _, t := range []string{"dpkg", "dpkg-deb"} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("vmhost: %s: %w (a Debian machine has it)", t, err)
		}
	}
	return image.StaticELF(c.Busybox)
}

// BuildImage builds the VM host image in cfg.Out, or returns the one there
// when it was built from the same inputs.
func BuildImage(ctx context.Context, cfg ImageConfig) (*Image, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	kdeb, kid, err := image.FetchKernel(ctx, cfg.KernelDeb, cfg.KernelPackage, cfg.CacheDir)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\nkernel %s\nmodules %s\n", imageFormat, kid, strings.Join(Modules, ","))
	h.Write(initScript)
	for _, f := range []string{cfg.Package, cfg.Busybox} {
		sum, err := fileSum(f)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(h, "file %s\n", sum)
	}
	hash := hex.EncodeToString(h.Sum(nil))
	if im, err := LoadImage(cfg.Out); err == nil && im.Hash == hash {
		log.Info("VM host image up to date", "dir", cfg.Out)
		return im, nil
	}

	start := time.Now()
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, fmt.Errorf("vmhost: image dir: %w", err)
	}
	work, err := os.MkdirTemp(cfg.Out, ".build-")
	if err != nil {
		return nil, fmt.Errorf("vmhost: %w", err)
	}
	defer os.RemoveAll(work)
	log.Info("unpacking the kernel package", "deb", filepath.Base(kdeb))
	k, err := image.UnpackKernel(ctx, kdeb, filepath.Join(work, "kernel"))
	if err != nil {
		return nil, err
	}
	nf, err := k.ModulesUnder(netfilterDirs...)
	if err != nil {
		return nil, err
	}
	files, err := k.ModuleClosure(append(append([]string(nil), Modules...), nf...))
	if err != nil {
		return nil, err
	}
	root := filepath.Join(work, "root")
	modRoot := filepath.Join(root, "lib", "modules", k.Version)
	for _, f := range files {
		if err := copyFile(filepath.Join(k.ModDir, f), filepath.Join(modRoot, f), 0o644); err != nil {
			return nil, err
		}
	}
	for _, f := range []string{"modules.builtin", "modules.builtin.modinfo", "modules.order"} {
		if err := copyFile(filepath.Join(k.ModDir, f), filepath.Join(modRoot, f), 0o644); err != nil {
			return nil, err
		}
	}
	if err := copyFile(cfg.Busybox, filepath.Join(root, "bin", "busybox"), 0o755); err != nil {
		return nil, err
	}
	if err := os.Symlink("busybox", filepath.Join(root, "bin", "sh")); err != nil {
		return nil, fmt.Errorf("vmhost: %w", err)
	}
	// modules.dep and modules.alias, so that modprobe and the kernel's
	// autoload find the modules (busybox's depmod: the host's kmod may be
	// missing on a fresh machine).
	if out, err := exec.CommandContext(ctx, cfg.Busybox, "depmod", "-b", root, k.Version).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("vmhost: depmod: %w: %s", err, out)
	}
	if err := install(ctx, root, cfg.Package); err != nil {
		return nil, err
	}
	if err := image.StaticELF(filepath.Join(root, strings.TrimPrefix(dist.Binary, "/"))); err != nil {
		return nil, fmt.Errorf("%w (build the package from a static binary: `make dist` does, CGO_ENABLED=0)", err)
	}
	if err := os.WriteFile(filepath.Join(root, "init"), initScript, 0o755); err != nil {
		return nil, fmt.Errorf("vmhost: %w", err)
	}
	if err := writeArchive(root, filepath.Join(work, baseInitrd)); err != nil {
		return nil, err
	}
	probe := filepath.Join(work, "probe")
	if err := copyFile(cfg.Busybox, filepath.Join(probe, "bin", "busybox"), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(probe, "init"), initScript, 0o755); err != nil {
		return nil, fmt.Errorf("vmhost: %w", err)
	}
	if err := writeArchive(probe, filepath.Join(work, probeInitrd)); err != nil {
		return nil, err
	}
	loaded, err := k.ModuleClosure(Modules)
	if err != nil {
		return nil, err
	}
	im := &Image{Dir: cfg.Out, Format: imageFormat, Hash: hash, KernelVersion: k.Version, KernelPackage: filepath.Base(kdeb),
		Package: filepath.Base(cfg.Package), Built: time.Now().UTC().Truncate(time.Second)}
	for _, f := range loaded {
		im.Modules = append(im.Modules, strings.ReplaceAll(strings.TrimSuffix(filepath.Base(f), ".ko"), "-", "_"))
	}
	man, err := json.MarshalIndent(im, "", "  ")
	if err != nil {
		return nil, err
	}
	os.Remove(filepath.Join(cfg.Out, manifestFile))
	for src, dst := range map[string]string{k.Vmlinux: im.Kernel(), filepath.Join(work, baseInitrd): im.BaseInitrd(), filepath.Join(work, probeInitrd): im.ProbeInitrd()} {
		if err := os.Rename(src, dst); err != nil {
			return nil, fmt.Errorf("vmhost: install %s: %w", filepath.Base(dst), err)
		}
	}
	if err := os.WriteFile(filepath.Join(cfg.Out, manifestFile), append(man, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("vmhost: %w", err)
	}
	log.Info("VM host image built", "dir", cfg.Out, "kernel", k.Version, "modules", len(files), "package", im.Package, "took", time.Since(start).Round(time.Millisecond))
	return im, nil
}

// LoadImage reads the image built in dir.
func LoadImage(dir string) (*Image, error) {
	b, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if err != nil {
		return nil, fmt.Errorf("vmhost: image %s: %w", dir, err)
	}
	var im Image
	if err := json.Unmarshal(b, &im); err != nil {
		return nil, fmt.Errorf("vmhost: image %s: %w", dir, err)
	}
	if im.Format != imageFormat {
		return nil, fmt.Errorf("vmhost: image %s has format %q, want %q", dir, im.Format, imageFormat)
	}
	im.Dir = dir
	for _, f := range []string{im.Kernel(), im.BaseInitrd(), im.ProbeInitrd()} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("vmhost: image %s: %w", dir, err)
		}
	}
	return &im, nil
}

// install installs the package into root with dpkg (its own database
// under root), as `apt-get install ./corridor.deb` does on a server. The
// maintainer scripts run outside the root and do nothing there
// (DPKG_ROOT is set).
func install(ctx context.Context, root, deb string) error {
	admin := filepath.Join(root, "var", "lib", "dpkg")
	for _, d := range []string{"info", "updates", "triggers"} {
		if err := os.MkdirAll(filepath.Join(admin, d), 0o755); err != nil {
			return fmt.Errorf("vmhost: %w", err)
		}
	}
	for _, f := range []string{"status", "available"} {
		if err := os.WriteFile(filepath.Join(admin, f), nil, 0o644); err != nil {
			return fmt.Errorf("vmhost: %w", err)
		}
	}
	cmd := exec.CommandContext(ctx, "dpkg", "--root="+root, "--force-script-chrootless", "--force-depends", "-i", deb)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("vmhost: dpkg -i %s into the image: %w: %s", deb, err, out)
	}
	return nil
}

func writeArchive(root, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("vmhost: %w", err)
	}
	if err := errors.Join(image.WriteArchive(f, root), f.Close()); err != nil {
		return fmt.Errorf("vmhost: write %s: %w", out, err)
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("vmhost: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("vmhost: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return fmt.Errorf("vmhost: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("vmhost: copy %s: %w", src, err)
	}
	return out.Close()
}

func fileSum(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("vmhost: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("vmhost: %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func writeArchiveTo(w io.Writer, root string) error {
	if err := image.WriteArchive(w, root); err != nil {
		return fmt.Errorf("vmhost: %w", err)
	}
	return nil
}

// CopyTo gives dir an image of its own, the same as im: hard links where
// dir is on im's file system, copies otherwise. A lab boots (and reboots)
// from its own copy, whatever later builds do to the shared cache.
func (im *Image) CopyTo(dir string) (*Image, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("vmhost: %w", err)
	}
	for _, name := range []string{image.KernelFile, baseInitrd, probeInitrd, manifestFile} {
		src, dst := filepath.Join(im.Dir, name), filepath.Join(dir, name)
		os.Remove(dst)
		if err := os.Link(src, dst); err == nil {
			continue
		}
		if err := copyFile(src, dst, 0o644); err != nil {
			return nil, err
		}
	}
	return LoadImage(dir)
}
