//go:build tools

// Package calico pins the Calico commands scripts/build-peers builds; it is never compiled
// itself.
package calico

import (
	_ "github.com/projectcalico/calico/calicoctl/calicoctl"
	_ "github.com/projectcalico/calico/cni-plugin/cmd/calico"
)
