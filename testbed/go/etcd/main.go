// Command etcd is the etcd server built from the published go.etcd.io/etcd/server/v3 module, because
// Debian's etcd is too old for current kube-apiserver health checks.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
