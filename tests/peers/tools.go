//go:build tools

// Package peers pins the commands scripts/build-peers builds; it is never compiled itself.
package peers

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
