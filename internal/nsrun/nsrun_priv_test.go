package nsrun

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/corridor-dev/corridor/internal/testnet"
)

// threadInode is the inode of the calling thread's network namespace.
// It returns an error rather than failing the test: fn runs off the test
// goroutine, where t.Fatal must not be called.
func threadInode(ino *uint64) error {
	var st unix.Stat_t
	if err := unix.Stat(ownNetns, &st); err != nil {
		return err
	}
	*ino = st.Ino
	return nil
}

func fileInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// callerInode is the namespace of a thread of ours, read while locked so
// the thread read is the thread run on.
func callerInode(t *testing.T) uint64 {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var ino uint64
	if err := threadInode(&ino); err != nil {
		t.Fatal(err)
	}
	return ino
}

// newNamed makes a named namespace for this test with Run (which must
// bring the thread back from the namespace netns.NewNamed enters) and
// removes it when the test ends.
func newNamed(t *testing.T, suffix string) string {
	t.Helper()
	name := fmt.Sprintf("cortst-nsrun-%d-%s", os.Getpid(), suffix)
	err := Run(func() error {
		ns, err := netns.NewNamed(name)
		if err != nil {
			return err
		}
		return ns.Close()
	})
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() { netns.DeleteNamed(name) }) //nolint:errcheck
	return filepath.Join("/run/netns", name)
}

// threadsIn lists the threads of this process whose namespace is ino: no
// thread may stay behind in a namespace after a call returns.
func threadsIn(t *testing.T, ino uint64) []string {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var in []string
	want := fmt.Sprintf("net:[%d]", ino)
	for _, task := range tasks {
		link, err := os.Readlink(filepath.Join("/proc/self/task", task.Name(), "ns/net"))
		if err == nil && link == want {
			in = append(in, task.Name())
		}
	}
	return in
}

func TestDoEntersAndReturns(t *testing.T) {
	testnet.NeedRoot(t, "creates network namespaces")
	path := newNamed(t, "do")
	target := fileInode(t, path)
	orig := callerInode(t)
	if target == orig {
		t.Fatalf("test namespace has the caller's inode %d", orig)
	}
	var inside uint64
	for i := 0; i < 20; i++ { // enough calls to reuse threads of the pool
		if err := Do(path, func() error { return threadInode(&inside) }); err != nil {
			t.Fatal(err)
		}
		if inside != target {
			t.Fatalf("inside fn: namespace %d, want %d (caller's %d)", inside, target, orig)
		}
		if got := callerInode(t); got != orig {
			t.Fatalf("after Do: caller's thread in %d, want %d", got, orig)
		}
	}
	if in := threadsIn(t, target); len(in) > 0 {
		t.Fatalf("threads %v stayed in the namespace after Do returned", in)
	}
}

func TestDoHandleEntersAndReturns(t *testing.T) {
	testnet.NeedRoot(t, "creates network namespaces")
	path := newNamed(t, "handle")
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	target, orig := fileInode(t, path), callerInode(t)
	var inside uint64
	if err := DoHandle(ns, func() error { return threadInode(&inside) }); err != nil {
		t.Fatal(err)
	}
	if inside != target || inside == orig {
		t.Fatalf("inside fn: namespace %d, want %d (caller's %d)", inside, target, orig)
	}
	if in := threadsIn(t, target); len(in) > 0 {
		t.Fatalf("threads %v stayed in the namespace after DoHandle returned", in)
	}
	if err := DoHandle(netns.None(), func() error { t.Error("fn ran without a namespace"); return nil }); err == nil {
		t.Error("DoHandle(None): no error")
	}
}

func TestDoNewIsFreshEachTime(t *testing.T) {
	testnet.NeedRoot(t, "creates network namespaces")
	orig := callerInode(t)
	seen := map[uint64]bool{orig: true}
	for i := 0; i < 3; i++ {
		var inside uint64
		if err := DoNew(func() error { return threadInode(&inside) }); err != nil {
			t.Fatal(err)
		}
		if seen[inside] {
			t.Fatalf("DoNew ran in namespace %d, already seen (caller's %d)", inside, orig)
		}
		seen[inside] = true
		if got := callerInode(t); got != orig {
			t.Fatalf("after DoNew: caller's thread in %d, want %d", got, orig)
		}
	}
}

// socketInode is the inode of the namespace a socket belongs to.
func socketInode(t *testing.T, c syscall.Conn) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var nsfd int
	var ierr error
	if err := rc.Control(func(fd uintptr) { nsfd, ierr = unix.IoctlRetInt(int(fd), unix.SIOCGSKNS) }); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatalf("SIOCGSKNS: %v", ierr)
	}
	defer unix.Close(nsfd)
	var st unix.Stat_t
	if err := unix.Fstat(nsfd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestSocketStaysInNamespace(t *testing.T) {
	testnet.NeedRoot(t, "creates network namespaces")
	path := newNamed(t, "sock")
	target := fileInode(t, path)
	var ln *net.TCPListener
	err := Do(path, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return err
		}
		ln = l.(*net.TCPListener)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Used from this goroutine, on whatever thread: still the namespace's.
	if got := socketInode(t, ln); got != target {
		t.Fatalf("listener in namespace %d, want %d", got, target)
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	addr := ln.Addr().String()
	if err := Do(path, func() error {
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}); err != nil {
		t.Fatalf("dial %s inside the namespace: %v", addr, err)
	}
}
