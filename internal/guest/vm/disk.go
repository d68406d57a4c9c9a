package vm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// qcow2Magic starts every qcow2 file ("QFI\xfb").
var qcow2Magic = []byte{'Q', 'F', 'I', 0xfb}

// qcow2 header offsets (QEMU's docs/interop/qcow2.txt).
const (
	qcow2BackingOffset = 8  // uint64: offset of the backing file's name, 0 for none
	qcow2Incompatible  = 72 // uint64: incompatible features (version 3)
	qcow2ExternalData  = 1 << 2
	qcow2HeaderV3      = 104
)

// diskFormat is QEMU's format for the disk image at path: qcow2 when its
// name ends in .qcow2 or its content starts with qcow2's magic (a
// delivered image is named by its hash), raw otherwise.
func diskFormat(path string) string {
	if strings.HasSuffix(path, ".qcow2") {
		return "qcow2"
	}
	f, err := os.Open(path)
	if err != nil {
		return "raw"
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err == nil && string(magic[:]) == string(qcow2Magic) {
		return "qcow2"
	}
	return "raw"
}

// ErrUnsafeDisk is the error of a delivered disk image that would make
// QEMU read files of the host.
var ErrUnsafeDisk = errors.New("vm: unsafe disk image")

// CheckDeliveredDisk checks a disk image that came from elsewhere (an
// artifact) before a VM boots it: a raw image is taken as it is; a qcow2
// image must name no backing file and no external data file, which QEMU
// would open on the host (any path, as root) and show the guest.
func CheckDeliveredDisk(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("vm: disk image: %w", err)
	}
	defer f.Close()
	var h [qcow2HeaderV3]byte
	n, err := io.ReadFull(f, h[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return fmt.Errorf("vm: disk image: %w", err)
	}
	if n < 4 || string(h[:4]) != string(qcow2Magic) {
		return nil // raw
	}
	if n < qcow2BackingOffset+8 {
		return fmt.Errorf("%w: truncated qcow2 header", ErrUnsafeDisk)
	}
	if binary.BigEndian.Uint64(h[qcow2BackingOffset:]) != 0 {
		return fmt.Errorf("%w: the qcow2 image names a backing file (flatten it: qemu-img convert -O qcow2 IN OUT)", ErrUnsafeDisk)
	}
	if version := binary.BigEndian.Uint32(h[4:]); version >= 3 {
		if n < qcow2Incompatible+8 {
			return fmt.Errorf("%w: truncated qcow2 header", ErrUnsafeDisk)
		}
		if binary.BigEndian.Uint64(h[qcow2Incompatible:])&qcow2ExternalData != 0 {
			return fmt.Errorf("%w: the qcow2 image keeps its data in an external file", ErrUnsafeDisk)
		}
	}
	return nil
}
