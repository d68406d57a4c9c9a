package spec

import (
	"strings"
	"testing"
)

const artifactSHA = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func artifactApp(guest string) string {
	return `apiVersion: corridor/v1
kind: App
name: shop
classes:
  - name: web
    tasks: 1
    guest:
      runtime: netns
` + guest + `    resources:
      cpu: 100m
      memory: 64Mi
`
}

func TestArtifactAccepted(t *testing.T) {
	for name, guest := range map[string]string{
		"store":         "      artifact:\n        url: corridor://" + artifactSHA + "\n        sha256: " + artifactSHA + "\n        args: [sample, web]\n",
		"https archive": "      artifact:\n        url: https://example.com/web.tar.gz\n        sha256: " + artifactSHA + "\n        run: bin/web\n",
		"store archive": "      artifact: {url: corridor://" + artifactSHA + ", sha256: " + artifactSHA + ", archive: true, run: web}\n",
	} {
		apps, err := DecodeApps("app.yaml", []byte(artifactApp(guest)))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if a := apps[0].Classes[0].Guest.Artifact; a.SHA256 != artifactSHA {
			t.Errorf("%s: artifact not decoded: %+v", name, a)
		}
	}
}

func TestArtifactErrors(t *testing.T) {
	for _, tc := range []struct {
		name, guest, want string
	}{
		{"both", "      command: [web]\n      artifact: {url: corridor://" + artifactSHA + ", sha256: " + artifactSHA + "}\n",
			"app.yaml:10:7: classes[0].guest.artifact: give either command"},
		{"short sha", "      artifact:\n        url: https://example.com/web\n        sha256: abc\n",
			"app.yaml:11:9: classes[0].guest.artifact.sha256: sha256 must be 64 lower-case hex digits"},
		{"upper sha", "      artifact:\n        url: https://example.com/web\n        sha256: " + strings.ToUpper(artifactSHA) + "\n",
			"app.yaml:11:9: classes[0].guest.artifact.sha256: sha256 must be 64"},
		{"http", "      artifact:\n        url: http://example.com/web\n        sha256: " + artifactSHA + "\n",
			"app.yaml:10:9: classes[0].guest.artifact.url: url must start with https:// or corridor://"},
		{"store other sha", "      artifact:\n        url: corridor://abc\n        sha256: " + artifactSHA + "\n",
			"app.yaml:10:9: classes[0].guest.artifact.url: a corridor:// url is corridor://SHA256"},
		{"archive without run", "      artifact:\n        url: https://example.com/web.tar.gz\n        sha256: " + artifactSHA + "\n",
			"classes[0].guest.artifact.run: run is required for an archive"},
		{"run escapes", "      artifact:\n        url: https://example.com/web.tgz\n        sha256: " + artifactSHA + "\n        run: ../../bin/sh\n",
			"app.yaml:12:9: classes[0].guest.artifact.run: run must be a clean relative path"},
		{"run on a file", "      artifact:\n        url: https://example.com/web\n        sha256: " + artifactSHA + "\n        run: web\n",
			"classes[0].guest.artifact.run: run applies only to an archive"},
		{"unknown field", "      artifact:\n        url: https://example.com/web\n        sha: " + artifactSHA + "\n",
			"app.yaml:11:9: classes[0].guest.artifact.sha: unknown field \"sha\""},
	} {
		_, err := DecodeApps("app.yaml", []byte(artifactApp(tc.guest)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}

func vmArtifactApp(guest string) string {
	return strings.Replace(artifactApp(guest), "runtime: netns", "runtime: vm", 1)
}

// TestVMArtifactAccepted: a VM's boot image as an artifact, an archive of
// an image directory (with the command its init runs) or a disk image.
func TestVMArtifactAccepted(t *testing.T) {
	for name, guest := range map[string]string{
		"image archive": "      command: [corridor, sample, web]\n      artifact: {url: corridor://" + artifactSHA + ", sha256: " + artifactSHA + ", archive: true}\n",
		"https archive": "      command: [corridor, sample, web]\n      artifact:\n        url: https://example.com/guest.tgz\n        sha256: " + artifactSHA + "\n",
		"disk":          "      command: [web]\n      artifact:\n        url: https://example.com/disk.qcow2\n        sha256: " + artifactSHA + "\n",
		"disk, command": "      command: [web]\n      artifact: {url: corridor://" + artifactSHA + ", sha256: " + artifactSHA + "}\n      vcpus: 2\n",
	} {
		apps, err := DecodeApps("app.yaml", []byte(vmArtifactApp(guest)))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if a := apps[0].Classes[0].Guest.Artifact; a.SHA256 != artifactSHA {
			t.Errorf("%s: artifact not decoded: %+v", name, a)
		}
	}
}

// TestVMArtifactErrors: what a VM's artifact cannot be combined with,
// each error located at its line and column.
func TestVMArtifactErrors(t *testing.T) {
	store := "      artifact: {url: corridor://" + artifactSHA + ", sha256: " + artifactSHA + "}\n"
	for _, tc := range []struct {
		name, guest, want string
	}{
		{"and image", "      image: /var/lib/corridor/disk.img\n" + store,
			"app.yaml:10:7: classes[0].guest.artifact: give either artifact (a guest image the agent fetches) or image (a path on the host), not both"},
		{"and kernel", "      command: [web]\n      kernel: /boot/vmlinux\n      initrd: /boot/initrd\n" + store,
			"app.yaml:12:7: classes[0].guest.artifact: give either artifact (a guest image the agent fetches) or kernel (a path on the host), not both"},
		{"and initrd", "      command: [web]\n      initrd: /boot/initrd\n" + store,
			"app.yaml:11:7: classes[0].guest.artifact: give either artifact (a guest image the agent fetches) or initrd"},
		{"run", "      command: [web]\n      artifact:\n        url: https://example.com/guest.tgz\n        sha256: " + artifactSHA + "\n        run: bin/web\n",
			"app.yaml:13:9: classes[0].guest.artifact.run: run applies only to runtime netns"},
		{"args", "      command: [web]\n      artifact:\n        url: https://example.com/disk.img\n        sha256: " + artifactSHA + "\n        args: [serve]\n",
			"app.yaml:13:9: classes[0].guest.artifact.args: args applies only to runtime netns"},
		{"archive without command", "      artifact: {url: corridor://" + artifactSHA + ", sha256: " + artifactSHA + ", archive: true}\n",
			"classes[0].guest.command: runtime vm with an artifact needs a command"},
		{"disk without command", "      artifact: {url: corridor://" + artifactSHA + ", sha256: " + artifactSHA + "}\n",
			"classes[0].guest.command: runtime vm with an artifact needs a command"},
		{"bad sha", "      artifact:\n        url: https://example.com/disk.img\n        sha256: abc\n",
			"app.yaml:11:9: classes[0].guest.artifact.sha256: sha256 must be 64 lower-case hex digits"},
		{"http", "      artifact:\n        url: http://example.com/disk.img\n        sha256: " + artifactSHA + "\n",
			"app.yaml:10:9: classes[0].guest.artifact.url: url must start with https:// or corridor://"},
	} {
		_, err := DecodeApps("app.yaml", []byte(vmArtifactApp(tc.guest)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}
