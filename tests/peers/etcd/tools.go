//go:build tools

// Package etcd pins the etcd server scripts/build-peers builds; it is never compiled itself.
package etcd

import _ "go.etcd.io/etcd/server/v3"
