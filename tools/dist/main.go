// Command dist builds Corridor's Debian package with nFPM (as a library):
// the corridor binary, the systemd units and default configuration files
// of packaging/, and man pages generated from the command tree. It is a
// module of its own so that nFPM and its dependencies stay out of the main
// module and the corridor binary. `make dist` runs it:
//
//	go run . --binary ../../bin/corridor --root ../.. --out ../../bin
package main

import (
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/corridor-dev/corridor/internal/cli"
	"github.com/corridor-dev/corridor/internal/dist"
	"github.com/corridor-dev/corridor/internal/version"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "dist:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("dist", flag.ContinueOnError)
	binary := fs.String("binary", "bin/corridor", "the corridor binary to package (static, linux/amd64)")
	src := fs.String("root", "../..", "the repository's root (packaging/, examples/, docs/)")
	out := fs.String("out", "bin", "directory to write corridor_VERSION_amd64.deb to")
	ver := fs.String("version", version.Version, "package version (a build version such as 0.1.0-dev; '-' becomes '~')")
	arch := fs.String("arch", "amd64", "Debian architecture of the binary")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if _, err := os.Stat(*binary); err != nil {
		return fmt.Errorf("--binary: %w (make build first)", err)
	}
	tmp, err := os.MkdirTemp("", "corridor-dist-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	mans, err := manPages(tmp)
	if err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	path, err := build(*binary, *src, mans, *out, dist.DebVersion(*ver), *arch)
	if err != nil {
		return err
	}
	fmt.Println(path)
	return nil
}

// manPages writes one gzipped page per command (corridor.1,
// corridor-agent.1, ...) from the same text as --help.
func manPages(dir string) ([]string, error) {
	raw := filepath.Join(dir, "man")
	if err := os.MkdirAll(raw, 0o755); err != nil {
		return nil, err
	}
	root := cli.NewRoot(io.Discard, io.Discard)
	root.DisableAutoGenTag = true
	walk(root, func(c *cobra.Command) { c.DisableAutoGenTag = true })
	epoch := time.Unix(0, 0).UTC()
	hdr := &doc.GenManHeader{Title: "CORRIDOR", Section: "1", Source: "Corridor " + version.Version, Manual: "Corridor Manual", Date: &epoch}
	if err := doc.GenManTree(root, hdr, raw); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(raw)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(raw, e.Name()))
		if err != nil {
			return nil, err
		}
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression) // no name, no time: reproducible
		if _, err := zw.Write(b); err != nil {
			return nil, err
		}
		if err := zw.Close(); err != nil {
			return nil, err
		}
		gz := filepath.Join(dir, e.Name()+".gz")
		if err := os.WriteFile(gz, buf.Bytes(), 0o644); err != nil {
			return nil, err
		}
		out = append(out, gz)
	}
	sort.Strings(out)
	if len(out) == 0 {
		return nil, errors.New("no page generated")
	}
	return out, nil
}

func walk(c *cobra.Command, f func(*cobra.Command)) {
	f(c)
	for _, s := range c.Commands() {
		walk(s, f)
	}
}

func build(binary, root string, mans []string, outDir, ver, arch string) (string, error) {
	mtime := time.Unix(0, 0).UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		var sec int64
		if _, err := fmt.Sscan(s, &sec); err == nil {
			mtime = time.Unix(sec, 0).UTC()
		}
	}
	contents := files.Contents{
		{Source: binary, Destination: dist.Binary, FileInfo: &files.ContentFileInfo{Mode: 0o755, MTime: mtime}},
	}
	for _, f := range dist.Files {
		c := &files.Content{Source: filepath.Join(root, f.Source), Destination: f.Dest,
			FileInfo: &files.ContentFileInfo{Mode: os.FileMode(f.Mode), MTime: mtime}}
		if f.Config {
			c.Type = files.TypeConfigNoReplace
		}
		contents = append(contents, c)
	}
	for _, m := range mans {
		contents = append(contents, &files.Content{Source: m, Destination: dist.ManDir + "/" + filepath.Base(m),
			FileInfo: &files.ContentFileInfo{Mode: 0o644, MTime: mtime}})
	}
	info := &nfpm.Info{
		Name:          dist.Package,
		Arch:          arch,
		Platform:      "linux",
		Version:       ver,
		VersionSchema: "none",
		Section:       "net",
		Priority:      "optional",
		Maintainer:    "Corridor developers <corridor@corridor.dev>",
		Homepage:      "https://github.com/corridor-dev/corridor",
		License:       "Apache-2.0",
		MTime:         mtime,
		Description: "per-pair encrypted or plain paths between tasks on your servers\n" +
			"Corridor places the tasks of your apps on servers, starts their guests\n" +
			"(network namespaces or QEMU VMs) and sets, on both hosts of every needed\n" +
			"pair, exactly the path the policy allows: encrypted (WireGuard) or plain\n" +
			"(VXLAN). This package holds the corridor binary (server, agent and CLI),\n" +
			"the corridor-server and corridor-agent systemd units and their\n" +
			"configuration files in /etc/corridor.",
		Overridables: nfpm.Overridables{
			Contents: contents,
			// The binary is static. Kernel WireGuard is in Debian's kernel;
			// wireguard-tools, nftables and iproute2 are for the operator's
			// eyes (wg show, nft list, ip), qemu for `runtime: vm` tasks.
			Recommends: []string{"wireguard-tools", "nftables", "iproute2"},
			Suggests:   []string{"qemu-system-x86"},
			Scripts: nfpm.Scripts{
				PostInstall: filepath.Join(root, dist.SourceDir, dist.PostInst),
				PreRemove:   filepath.Join(root, dist.SourceDir, dist.PreRm),
				PostRemove:  filepath.Join(root, dist.SourceDir, dist.PostRm),
			},
		},
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return "", fmt.Errorf("package contents: %w", err)
	}
	pkg, err := nfpm.Get("deb")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(outDir, pkg.ConventionalFileName(info))
	f, err := os.Create(path + ".part")
	if err != nil {
		return "", err
	}
	if err := pkg.Package(info, f); err != nil {
		f.Close()
		os.Remove(path + ".part")
		return "", fmt.Errorf("build deb: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return path, os.Rename(path+".part", path)
}
