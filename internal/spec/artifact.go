package spec

import (
	"net/url"
	"path"
	"regexp"
	"strings"
)

// Artifact is a task program delivered to the hosts instead of being
// installed on each of them: a single executable, or a .tar.gz archive
// of which Run names the program to start. For runtime vm it is the
// guest's boot image instead: a .tar.gz of an image directory (as
// `corridor image build` writes it) or a single disk image. The agent fetches it into a
// content-addressed cache, checks it against SHA256 before it ever runs,
// and unpacks archives (internal/artifact).
type Artifact struct {
	// URL is where the artifact is: https://... on any HTTPS server, or
	// corridor://SHA256 for the control plane's own store (uploaded with
	// `corridor artifact push`; the agent fetches it with its mTLS
	// identity from GET /v1/artifacts/SHA256).
	URL string `yaml:"url" json:"url"`
	// SHA256 is the hex SHA-256 of the file at URL (64 lower-case hex
	// digits): the agent runs nothing else.
	SHA256 string `yaml:"sha256" json:"sha256"`
	// Run is, for an archive (a URL ending in .tar.gz or .tgz, or Archive
	// set), the program inside it, as a relative path such as bin/web.
	// Empty for a single executable.
	Run string `yaml:"run,omitempty" json:"run,omitempty"`
	// Archive says the artifact is a .tar.gz whatever its URL's name
	// (corridor:// URLs carry no name). Implied by a .tar.gz or .tgz URL.
	Archive bool `yaml:"archive,omitempty" json:"archive,omitempty"`
	// Args are the program's arguments (command's tail, for a program
	// named by path).
	Args []string `yaml:"args,omitempty" json:"args,omitempty"`
}

// ArtifactScheme is the URL scheme of the control plane's own store.
const ArtifactScheme = "corridor"

// IsZero reports whether no artifact is named.
func (a Artifact) IsZero() bool {
	return a.URL == "" && a.SHA256 == "" && a.Run == "" && !a.Archive && len(a.Args) == 0
}

// IsArchive reports whether the artifact is a .tar.gz to unpack.
func (a Artifact) IsArchive() bool {
	if a.Archive {
		return true
	}
	u, err := url.Parse(a.URL)
	if err != nil {
		return false
	}
	return strings.HasSuffix(u.Path, ".tar.gz") || strings.HasSuffix(u.Path, ".tgz")
}

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ValidSHA256 reports whether s is 64 lower-case hex digits.
func ValidSHA256(s string) bool { return sha256RE.MatchString(s) }

// maxArtifactURL bounds an artifact URL's length.
const maxArtifactURL = 2048

// validateVMArtifact checks the artifact of a runtime vm guest: its boot
// image, either an archive of a guest image directory (as `corridor image
// build` writes it: image.json, the kernel and the initramfs; the image's
// init runs command) or a single disk image (raw or qcow2, booted by the
// host's default kernel as the image field's is). It stands in place of
// the kernel, initrd and image paths, and takes neither run nor args:
// the program is command, which it needs (the VM runtime hands it to the
// guest's init).
func validateVMArtifact(w *where, g *Guest, p string) {
	for _, f := range []struct{ field, val string }{{"kernel", g.Kernel}, {"initrd", g.Initrd}, {"image", g.Image}} {
		if f.val != "" {
			w.errorf(p+".artifact", "give either artifact (a guest image the agent fetches) or %s (a path on the host), not both", f.field)
			break
		}
	}
	a := g.Artifact
	if a.Run != "" {
		w.errorf(p+".artifact.run", "run applies only to runtime netns: a VM boots the whole image (an archive's image.json names its kernel and initramfs), whose init runs command")
	}
	if len(a.Args) > 0 {
		w.errorf(p+".artifact.args", "args applies only to runtime netns: a VM's program and its arguments are command, run by the image's init")
	}
	if len(g.Command) == 0 {
		w.errorf(p+".command", "runtime vm with an artifact needs a command: the program the image's init runs")
	}
	a.Run, a.Args = "", nil
	validateArtifact(w, a, p+".artifact", RuntimeVM)
}

func validateArtifact(w *where, a Artifact, p, runtime string) {
	switch {
	case a.URL == "":
		w.errorf(p+".url", "url is required: https://... or corridor://SHA256 (the control plane's store, see `corridor artifact push`)")
	case len(a.URL) > maxArtifactURL:
		w.errorf(p+".url", "url is longer than %d characters", maxArtifactURL)
	default:
		u, err := url.Parse(a.URL)
		switch {
		case err != nil:
			w.errorf(p+".url", "url %q is not a URL: %v", truncate(a.URL), err)
		case u.Scheme == "https":
			if u.Host == "" {
				w.errorf(p+".url", "url %q names no host", truncate(a.URL))
			}
			if u.User != nil {
				w.errorf(p+".url", "url must not carry a user or password (it is stored and shown in plain)")
			}
		case u.Scheme == ArtifactScheme:
			if u.Host != a.SHA256 || u.Path != "" || u.RawQuery != "" || u.User != nil {
				w.errorf(p+".url", "a corridor:// url is corridor://SHA256, with the artifact's sha256 (as `corridor artifact push` prints it), got %q", truncate(a.URL))
			}
		default:
			w.errorf(p+".url", "url must start with https:// or corridor://, got %q", truncate(a.URL))
		}
	}
	if !ValidSHA256(a.SHA256) {
		w.errorf(p+".sha256", "sha256 must be 64 lower-case hex digits (sha256sum FILE), got %q", truncate(a.SHA256))
	}
	// A VM's archive is a whole image, with no run (validateVMArtifact).
	if a.IsArchive() && runtime != RuntimeVM {
		switch {
		case a.Run == "":
			w.errorf(p+".run", "run is required for an archive: the program inside it, such as bin/web")
		case path.IsAbs(a.Run) || a.Run != path.Clean(a.Run) || a.Run == "." || a.Run == ".." || strings.HasPrefix(a.Run, "../"):
			w.errorf(p+".run", "run must be a clean relative path inside the archive, such as bin/web, got %q", truncate(a.Run))
		case strings.ContainsRune(a.Run, 0):
			w.errorf(p+".run", "must not contain a NUL byte")
		}
	} else if a.Run != "" {
		w.errorf(p+".run", "run applies only to an archive (a .tar.gz or .tgz url, or archive: true)")
	}
	for i, arg := range a.Args {
		if strings.ContainsRune(arg, 0) {
			w.errorf(indexPath(p+".args", i), "must not contain a NUL byte")
		}
	}
}
