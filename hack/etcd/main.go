// Command etcd is etcd's own entry point, built from the published
// go.etcd.io/etcd/server/v3 module so that the binary is named etcd.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
