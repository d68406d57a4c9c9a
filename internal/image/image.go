// Package image builds Corridor's minimal VM guest image: a Debian kernel
// (unpacked from its package, never installed), uncompressed to an ELF
// vmlinux that QEMU boots directly, and an initramfs of busybox-static,
// the kernel modules the guest needs (virtio-net and its dependencies,
// the ACPI power button), Corridor's guest init and, optionally, a static
// corridor binary so that the sample app runs inside the VM.
//
// A build is cached: the output directory's image.json records a hash of
// every input, and an unchanged build returns at once.
package image

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Defaults of a build.
const (
	DefaultOut           = "/var/lib/corridor/images/default"
	DefaultCacheDir      = "/var/cache/corridor/debs"
	DefaultKernelPackage = "linux-image-amd64"
	DefaultBusybox       = "/bin/busybox"

	// ManifestFile names the manifest in an image directory.
	ManifestFile = "image.json"
	// KernelFile and InitrdFile name the boot files in an image directory.
	KernelFile = "vmlinux"
	InitrdFile = "initrd.cpio"
	// GuestBinary is where the corridor binary sits inside the guest.
	GuestBinary = "/usr/bin/corridor"
	// ReadyLine is what the guest init prints on the console once its
	// network is up, just before it starts the task.
	ReadyLine = "corridor-guest: ready"

	// format changes whenever what Build writes changes, so that images
	// from an older builder are rebuilt.
	format = "corridor-image/1"
)

// DefaultModules are the kernel modules the guest loads (with their
// dependencies): the virtio network card on a PCI machine, the virtio
// console for the probe port (verify's probes from the guest), and the
// ACPI power button plus evdev so that a QMP system_powerdown reaches init.
var DefaultModules = []string{"virtio_pci", "virtio_net", "virtio_console", "button", "evdev"}

//go:embed init.sh
var initScript []byte

// Config describes a build. Zero values take the defaults.
type Config struct {
	// Out is the image directory (vmlinux, initrd.cpio, image.json).
	Out string
	// KernelDeb is a local kernel package (.deb). Empty: KernelPackage is
	// fetched with `apt-get download` into CacheDir.
	KernelDeb     string
	KernelPackage string
	CacheDir      string
	// Busybox is a statically linked busybox (Debian: busybox-static).
	Busybox string
	Modules []string
	// WithSample puts a static corridor binary at /usr/bin/corridor.
	// SampleBinary is that binary; empty means this executable, which
	// must then be statically linked (CGO_ENABLED=0).
	WithSample   bool
	SampleBinary string
	// Force rebuilds even when the inputs are unchanged.
	Force  bool
	Logger *slog.Logger
}

// Image is a built guest image.
type Image struct {
	Dir           string    `json:"-"`
	Format        string    `json:"format"`
	Hash          string    `json:"hash"` // of all inputs
	KernelVersion string    `json:"kernelVersion"`
	KernelPackage string    `json:"kernelPackage"` // the .deb's file name
	Kernel        string    `json:"kernel"`        // file name in Dir
	Initrd        string    `json:"initrd"`        // file name in Dir
	Modules       []string  `json:"modules"`       // in load order
	Sample        bool      `json:"sample"`
	Built         time.Time `json:"built"`
	// Cached is true when Build found the image up to date.
	Cached bool `json:"-"`
}

// KernelPath and InitrdPath are the absolute paths of the boot files.
func (im *Image) KernelPath() string { return filepath.Join(im.Dir, im.Kernel) }

// InitrdPath is the absolute path of the initramfs.
func (im *Image) InitrdPath() string { return filepath.Join(im.Dir, im.Initrd) }

// Load reads the image in dir and checks that its files are there.
func Load(dir string) (*Image, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("image: %s: %w (build one with `corridor image build --out %s`)", dir, err, dir)
	}
	return loadManifest(dir, b)
}

func loadManifest(dir string, b []byte) (*Image, error) {
	var im Image
	if err := json.Unmarshal(b, &im); err != nil {
		return nil, fmt.Errorf("image: %s: %w", filepath.Join(dir, ManifestFile), err)
	}
	im.Dir = dir
	for _, f := range []string{im.Kernel, im.Initrd} {
		if f == "" {
			return nil, fmt.Errorf("image: %s: manifest names no kernel or initrd", dir)
		}
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return nil, fmt.Errorf("image: %s: %w", dir, err)
		}
	}
	return &im, nil
}

func (c *Config) defaults() error {
	if c.Out == "" {
		c.Out = DefaultOut
	}
	if c.KernelPackage == "" {
		c.KernelPackage = DefaultKernelPackage
	}
	if c.CacheDir == "" {
		c.CacheDir = DefaultCacheDir
	}
	if c.Busybox == "" {
		c.Busybox = DefaultBusybox
	}
	if len(c.Modules) == 0 {
		c.Modules = DefaultModules
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if err := StaticELF(c.Busybox); err != nil {
		return fmt.Errorf("image: busybox: %w (install busybox-static)", err)
	}
	if c.WithSample {
		if c.SampleBinary == "" {
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("image: sample binary: %w", err)
			}
			c.SampleBinary = exe
		}
		if err := StaticELF(c.SampleBinary); err != nil {
			return fmt.Errorf("image: sample binary: %w (build corridor with CGO_ENABLED=0, or pass a static one)", err)
		}
	}
	return nil
}

// StaticELF fails unless path is a statically linked ELF executable: the
// guest (and the VM host image, internal/vmhost) has no C library.
func StaticELF(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", path)
		}
	}
	return nil
}

// Build makes the image in cfg.Out, or returns the one there when it was
// built from the same inputs.
func Build(ctx context.Context, cfg Config) (*Image, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	var deb debInfo
	if cfg.KernelDeb != "" {
		sum, err := fileSHA256(cfg.KernelDeb)
		if err != nil {
			return nil, fmt.Errorf("image: kernel package: %w", err)
		}
		deb = debInfo{Path: cfg.KernelDeb, ID: "SHA256:" + sum}
	} else {
		log.Info("fetching kernel package", "package", cfg.KernelPackage, "cache", cfg.CacheDir)
		var err error
		if deb, err = downloadKernel(ctx, cfg.KernelPackage, cfg.CacheDir); err != nil {
			return nil, err
		}
	}
	hash, err := inputHash(cfg, deb)
	if err != nil {
		return nil, err
	}
	if !cfg.Force {
		if im, err := Load(cfg.Out); err == nil && im.Hash == hash && im.Format == format {
			im.Cached = true
			log.Info("image up to date", "dir", cfg.Out, "hash", hash[:12])
			return im, nil
		}
	}

	start := time.Now()
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, fmt.Errorf("image: out dir: %w", err)
	}
	work, err := os.MkdirTemp(cfg.Out, ".build-")
	if err != nil {
		return nil, fmt.Errorf("image: work dir: %w", err)
	}
	defer os.RemoveAll(work)
	log.Info("unpacking kernel package", "deb", filepath.Base(deb.Path))
	kern, err := unpackDeb(ctx, deb.Path, filepath.Join(work, "deb"))
	if err != nil {
		return nil, err
	}
	if err := extractVmlinux(ctx, kern.BzImage, filepath.Join(work, KernelFile)); err != nil {
		return nil, err
	}
	idx, err := moduleIndex(kern.Modules)
	if err != nil {
		return nil, err
	}
	order, err := loadOrder(cfg.Modules, builtinModules(kern.Modules), func(name string) ([]string, error) {
		p, ok := idx[name]
		if !ok {
			return nil, fmt.Errorf("image: module %s is not in kernel %s", name, kern.Version)
		}
		return moduleDepends(p)
	})
	if err != nil {
		return nil, err
	}

	ar := newArchive()
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "etc", "root", "var/log"} {
		ar.dir(d)
	}
	ar.add(entry{Name: "dev/console", Mode: modeChar | 0o600, RdevMajor: 5, RdevMinor: 1})
	bb, err := os.ReadFile(cfg.Busybox)
	if err != nil {
		return nil, fmt.Errorf("image: busybox: %w", err)
	}
	ar.file("bin/busybox", 0o755, bb)
	ar.symlink("bin/sh", "busybox")
	ar.file("init", 0o755, initScript)
	ar.file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	ar.file("etc/group", 0o644, []byte("root:x:0:\n"))
	for _, m := range order {
		b, err := os.ReadFile(idx[m])
		if err != nil {
			return nil, fmt.Errorf("image: module %s: %w", m, err)
		}
		ar.file("lib/modules/"+m+".ko", 0o644, b)
	}
	ar.file("lib/modules/order", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	if cfg.WithSample {
		p := cfg.SampleBinary
		ar.add(entry{Name: strings.TrimPrefix(GuestBinary, "/"), Mode: modeFile | 0o755, Open: func() (io.ReadCloser, int64, error) {
			f, err := os.Open(p)
			if err != nil {
				return nil, 0, err
			}
			st, err := f.Stat()
			if err != nil {
				f.Close()
				return nil, 0, err
			}
			return f, st.Size(), nil
		}})
	}
	// Uncompressed: under TCG the guest kernel would spend seconds
	// inflating a compressed initramfs, while reading a larger file on the
	// host costs nothing.
	ir, err := os.Create(filepath.Join(work, InitrdFile))
	if err != nil {
		return nil, fmt.Errorf("image: initrd: %w", err)
	}
	if err := errors.Join(ar.writeTo(ir), ir.Close()); err != nil {
		return nil, fmt.Errorf("image: write initrd: %w", err)
	}
	im := &Image{
		Dir: cfg.Out, Format: format, Hash: hash, KernelVersion: kern.Version,
		KernelPackage: filepath.Base(deb.Path), Kernel: KernelFile, Initrd: InitrdFile,
		Modules: order, Sample: cfg.WithSample, Built: time.Now().UTC().Truncate(time.Second),
	}
	man, err := json.MarshalIndent(im, "", "  ")
	if err != nil {
		return nil, err
	}
	// The manifest goes last: an interrupted build leaves no image.json
	// that matches, so the next build starts over.
	os.Remove(filepath.Join(cfg.Out, ManifestFile))
	for _, f := range []string{KernelFile, InitrdFile} {
		if err := os.Rename(filepath.Join(work, f), filepath.Join(cfg.Out, f)); err != nil {
			return nil, fmt.Errorf("image: install %s: %w", f, err)
		}
	}
	if err := os.WriteFile(filepath.Join(cfg.Out, ManifestFile), append(man, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("image: write manifest: %w", err)
	}
	log.Info("image built", "dir", cfg.Out, "kernel", kern.Version, "modules", len(order), "sample", cfg.WithSample, "took", time.Since(start).Round(time.Millisecond))
	return im, nil
}

// inputHash covers everything that decides the image's bytes.
func inputHash(cfg Config, deb debInfo) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\nkernel %s\n", format, deb.ID)
	mods := slices.Clone(cfg.Modules)
	slices.Sort(mods)
	fmt.Fprintf(h, "modules %s\n", strings.Join(mods, ","))
	h.Write(initScript)
	files := []string{cfg.Busybox}
	if cfg.WithSample {
		files = append(files, cfg.SampleBinary)
	}
	for _, f := range files {
		sum, err := fileSHA256(f)
		if err != nil {
			return "", fmt.Errorf("image: hash inputs: %w", err)
		}
		fmt.Fprintf(h, "file %s\n", sum)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// LoadUnpacked reads an image directory that came from elsewhere (a VM
// image delivered as an artifact and unpacked by the agent): as Load, and
// the kernel and initramfs its manifest names must be plain file names of
// regular files in dir, so that a manifest cannot point QEMU at a file of
// the host.
func LoadUnpacked(dir string) (*Image, error) {
	st, err := os.Lstat(filepath.Join(dir, ManifestFile))
	if err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("image: not a guest image: no %s at the archive's top (pack an image directory with `tar -C DIR -czf image.tgz .`)", ManifestFile)
	}
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	var names struct{ Kernel, Initrd string }
	if err := json.Unmarshal(b, &names); err != nil {
		return nil, fmt.Errorf("image: %s: %w", ManifestFile, err)
	}
	// Checked before anything is looked up by these names.
	for _, f := range []struct{ what, name string }{{"kernel", names.Kernel}, {"initrd", names.Initrd}} {
		if f.name == "" || f.name != filepath.Base(f.name) || !filepath.IsLocal(f.name) {
			return nil, fmt.Errorf("image: %s: %s %q is not a file name in the image", ManifestFile, f.what, f.name)
		}
		st, err := os.Lstat(filepath.Join(dir, f.name))
		if err != nil || !st.Mode().IsRegular() {
			return nil, fmt.Errorf("image: %s: %s %q is not a regular file in the image", ManifestFile, f.what, f.name)
		}
	}
	return loadManifest(dir, b)
}
