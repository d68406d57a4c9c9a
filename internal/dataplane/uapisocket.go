package dataplane

import "path/filepath"

// UAPISocket is the UAPI socket of the wireguard-go device name: in a
// directory shared by the whole machine, whatever the network namespace.
func UAPISocket(name string) string { return filepath.Join(uapiDir, name+".sock") }
