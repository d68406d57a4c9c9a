package nsguest

import (
	"fmt"
	"syscall"
	"unsafe"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The seccomp filter of a netns guest refuses (EPERM) what a task never
// needs and what would reach past its namespaces; everything else is
// allowed (a deny list: a program that works unsealed works sealed,
// unless it mounts, traces or loads things into the kernel). Its rules,
// documented in docs/guests.md:
//
//   - mounts and root changes: mount, umount2, pivot_root, chroot and the
//     new mount API (fsopen, fsmount, move_mount, open_tree, ...);
//   - namespaces: setns; unshare, clone with any CLONE_NEW* flag (new user
//     namespaces above all); clone3 returns ENOSYS, since its flags are
//     out of a filter's reach (libc then falls back to clone);
//   - the kernel: module loading, kexec, reboot, swapon/swapoff, bpf,
//     perf_event_open, keyctl/add_key/request_key, io_uring, userfaultfd,
//     syslog, acct, quotactl, clock and time setting, iopl/ioperm;
//   - other processes: ptrace, process_vm_readv/writev, kcmp,
//     pidfd_getfd, open_by_handle_at;
//   - raw and packet sockets (socket(AF_PACKET, ...), socket(AF_INET or
//     AF_INET6, SOCK_RAW or SOCK_PACKET, ...)), unless guest.netRaw;
//     netlink sockets stay open (the kernel refuses changes without
//     CAP_NET_ADMIN, and the namespace is the guest's own).
//
// Each refusal is a second lock: the task's uid without capabilities is
// refused most of these by the kernel anyway; the filter also closes what
// an unprivileged process could do (user namespaces, ptrace of its own
// processes, bpf, keyctl, io_uring, userfaultfd).
var deniedSyscalls = []string{
	"mount", "umount2", "pivot_root", "chroot",
	"fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
	"setns", "unshare",
	"init_module", "finit_module", "delete_module", "create_module",
	"kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff",
	"bpf", "perf_event_open", "keyctl", "add_key", "request_key",
	"io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd",
	"syslog", "acct", "quotactl", "quotactl_fd", "lookup_dcookie", "vhangup",
	"settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm",
	"ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
	"open_by_handle_at", "name_to_handle_at", "nfsservctl", "uselib",
}

// cloneNewFlags are the namespace flags a guest's clone may not carry
// (CLONE_NEWTIME only exists for clone3 and unshare, both refused; its
// bit is clone's exit-signal field).
const cloneNewFlags = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER |
	unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP

// seccompPolicy is the guest's filter for this machine's architecture.
// Syscalls the architecture lacks (iopl on arm64, say) are left out.
func seccompPolicy(netRaw bool) (seccomp.Policy, error) {
	info, err := arch.GetInfo("")
	if err != nil {
		return seccomp.Policy{}, fmt.Errorf("%w: seccomp: %w", errSealed, err)
	}
	has := func(name string) bool { _, ok := info.SyscallNames[name]; return ok }
	var names []string
	for _, n := range deniedSyscalls {
		if has(n) {
			names = append(names, n)
		}
	}
	deny := seccomp.SyscallGroup{Action: seccomp.ActionErrno, Names: names}
	// clone's flags are its first argument on x86_64 and arm64 alike.
	deny.NamesWithCondtions = append(deny.NamesWithCondtions, seccomp.NameWithConditions{
		Name: "clone", Conditions: seccomp.ArgumentConditions{{Argument: 0, Operation: seccomp.BitsSet, Value: cloneNewFlags}},
	})
	if !netRaw {
		// The kernel reads these int arguments' low 32 bits; a filter
		// compares all 64, so a caller could dodge these rules with high
		// bits set. They back up the missing CAP_NET_RAW, which the
		// kernel checks for every one of these sockets.
		deny.NamesWithCondtions = append(deny.NamesWithCondtions, seccomp.NameWithConditions{
			Name: "socket", Conditions: seccomp.ArgumentConditions{{Argument: 0, Operation: seccomp.Equal, Value: unix.AF_PACKET}},
		})
		// Raw IP sockets (netlink, whose sockets are SOCK_RAW too, stays
		// open: programs read their addresses through it).
		for _, family := range []uint64{unix.AF_INET, unix.AF_INET6} {
			for _, typ := range []uint64{unix.SOCK_RAW, unix.SOCK_PACKET} {
				for _, fl := range []uint64{0, unix.SOCK_NONBLOCK, unix.SOCK_CLOEXEC, unix.SOCK_NONBLOCK | unix.SOCK_CLOEXEC} {
					deny.NamesWithCondtions = append(deny.NamesWithCondtions, seccomp.NameWithConditions{
						Name: "socket", Conditions: seccomp.ArgumentConditions{
							{Argument: 0, Operation: seccomp.Equal, Value: family},
							{Argument: 1, Operation: seccomp.Equal, Value: typ | fl},
						},
					})
				}
			}
		}
	}
	groups := []seccomp.SyscallGroup{deny}
	if has("clone3") {
		groups = append(groups, seccomp.SyscallGroup{
			Action: seccomp.ActionErrno | seccomp.Action(unix.ENOSYS), Names: []string{"clone3"},
		})
	}
	return seccomp.Policy{DefaultAction: seccomp.ActionAllow, Syscalls: groups}, nil
}

// installSeccomp sets no_new_privs and installs, on every thread, the
// architecture guard and then the guest's filter.
func installSeccomp(netRaw bool) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("%w: no_new_privs: %w", errSealed, err)
	}
	if err := installArchGuard(); err != nil {
		return err
	}
	policy, err := seccompPolicy(netRaw)
	if err != nil {
		return err
	}
	err = seccomp.LoadFilter(seccomp.Filter{NoNewPrivs: true, Flag: seccomp.FilterFlagTSync, Policy: policy})
	if err != nil {
		return fmt.Errorf("%w: seccomp: %w", errSealed, err)
	}
	return nil
}

// installArchGuard kills a process that makes a system call through
// another architecture's entry (int 0x80 on x86_64, say). go-seccomp-bpf
// lets such calls take its policy's default action, which for a deny list
// is "allow": without this guard, the 32-bit entry would skip every rule.
// (x32 calls, which share the native architecture number, the library
// refuses itself.)
func installArchGuard() error {
	info, err := arch.GetInfo("")
	if err != nil {
		return fmt.Errorf("%w: seccomp: %w", errSealed, err)
	}
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 4, Size: 4}, // seccomp_data.arch
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(info.ID), SkipTrue: 1},
		bpf.RetConstant{Val: unix.SECCOMP_RET_KILL_PROCESS},
		bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW},
	})
	if err != nil {
		return fmt.Errorf("%w: seccomp arch guard: %w", errSealed, err)
	}
	filter := make([]unix.SockFilter, len(prog))
	for i, in := range prog {
		filter[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog))); e != 0 {
		return fmt.Errorf("%w: seccomp arch guard: %w", errSealed, syscall.Errno(e))
	}
	return nil
}
