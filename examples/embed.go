// Package examples ships the example specs inside the corridor binary, so
// that `corridor demo` works from any directory.
package examples

import _ "embed"

// Shop is examples/shop.yaml: web -> app plain, app -> db encrypted.
//
//go:embed shop.yaml
var Shop []byte

// ShopVM is examples/shop-vm.yaml: the shop with its db tier in a VM.
//
//go:embed shop-vm.yaml
var ShopVM []byte

// ShopPG is examples/shop-pg.yaml: the shop with a real PostgreSQL as its
// db tier.
//
//go:embed shop-pg.yaml
var ShopPG []byte
