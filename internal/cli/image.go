package cli

import (
	"log/slog"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/image"
)

func init() { register(newImageCmd) }

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build the minimal guest image that `runtime: vm` tasks boot",
		Long: `A VM guest boots a Debian kernel (unpacked from its package, not installed)
with an initramfs made of busybox-static, the virtio-net modules and Corridor's
guest init. See docs/guests.md for the kernel command line the init reads.`,
		Example: `  corridor image build
  corridor image build --out /var/lib/corridor/images/default --with-sample`,
	}
	cmd.AddCommand(newImageBuildCmd())
	return cmd
}

func newImageBuildCmd() *cobra.Command {
	var cfg image.Config
	var output *string
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build (or find up to date) a guest image: vmlinux, initrd.cpio, image.json",
		Long: `Build fetches the kernel package with apt-get download (or takes --kernel-deb),
extracts an uncompressed vmlinux that QEMU boots directly, and writes an
initramfs with busybox-static, the kernel modules the guest needs (with their
dependencies) and the guest init. With --with-sample it also carries a static
corridor binary at /usr/bin/corridor, so that "corridor sample db" runs in the
VM. The result is cached: when no input changed, the build returns at once.

Needs, to build: apt-get and dpkg-deb (Debian), busybox-static, xz-utils;
to boot the image: qemu-system-x86.`,
		Example: `  corridor image build
  corridor image build --with-sample --out /tmp/img -o json
  corridor image build --kernel-deb ./linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo}))
			im, err := image.Build(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return printData(cmd.OutOrStdout(), *output, imageView(im), func(t *Table) {
				t.Header("DIR", "KERNEL", "MODULES", "SAMPLE", "CACHED", "HASH")
				t.Row(im.Dir, im.KernelVersion, strconv.Itoa(len(im.Modules)), strconv.FormatBool(im.Sample),
					strconv.FormatBool(im.Cached), im.Hash[:12])
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Out, "out", image.DefaultOut, "image directory")
	f.BoolVar(&cfg.WithSample, "with-sample", false, "carry a static corridor binary (to run the sample app in the guest)")
	f.StringVar(&cfg.SampleBinary, "sample-binary", "", "static corridor binary to carry (default: this executable)")
	f.StringVar(&cfg.KernelDeb, "kernel-deb", "", "local kernel .deb (default: apt-get download --kernel-package)")
	f.StringVar(&cfg.KernelPackage, "kernel-package", image.DefaultKernelPackage, "kernel package to download")
	f.StringVar(&cfg.CacheDir, "cache", image.DefaultCacheDir, "where downloaded packages are kept")
	f.StringVar(&cfg.Busybox, "busybox", image.DefaultBusybox, "statically linked busybox")
	f.StringSliceVar(&cfg.Modules, "modules", image.DefaultModules, "kernel modules to load in the guest (dependencies are added)")
	f.BoolVar(&cfg.Force, "force", false, "rebuild even when the inputs are unchanged")
	output = addOutputFlag(cmd)
	return cmd
}

// imageViewT is the data form of a built image.
type imageViewT struct {
	Dir           string   `json:"dir"`
	Kernel        string   `json:"kernel"`
	Initrd        string   `json:"initrd"`
	KernelVersion string   `json:"kernelVersion"`
	KernelPackage string   `json:"kernelPackage"`
	Modules       []string `json:"modules"`
	Sample        bool     `json:"sample"`
	Cached        bool     `json:"cached"`
	Hash          string   `json:"hash"`
}

func imageView(im *image.Image) imageViewT {
	return imageViewT{
		Dir: im.Dir, Kernel: im.KernelPath(), Initrd: im.InitrdPath(), KernelVersion: im.KernelVersion,
		KernelPackage: im.KernelPackage, Modules: im.Modules, Sample: im.Sample, Cached: im.Cached, Hash: im.Hash,
	}
}
