// rwmutex: one hold of etcd's Go recipe.RWMutex, the peer of locksmith's interop tests
// (backend-etcd/tests/rwlock_interop.rs). It opens a session on the endpoints, takes
// RLock (-mode read) or Lock (-mode write) of -name, prints "locked" once it holds, holds
// until its standard input closes or it gets SIGINT or SIGTERM, then unlocks, prints
// "unlocked" and exits 0. A signal while it waits ends it without a hold (closing the
// session revokes the lease and with it the waiting key). Errors go to stderr, exit 1.
//
// Built GOPATH-style against Debian's etcd 3.4 sources (golang-etcd-server-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o rwmutex .
//	./rwmutex -endpoints 127.0.0.1:2379 -name NAME -mode write
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
	recipe "go.etcd.io/etcd/contrib/recipes"
)

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "etcd endpoints, comma-separated")
	name := flag.String("name", "", "the lock name, namespace included (keys NAME/read/…, NAME/write/…)")
	mode := flag.String("mode", "write", "read (RLock) or write (Lock)")
	ttl := flag.Int("ttl", 10, "session TTL in seconds")
	flag.Parse()
	if *name == "" || (*mode != "read" && *mode != "write") {
		fmt.Fprintln(os.Stderr, "usage: rwmutex -endpoints HOST:PORT[,…] -name NAME -mode read|write [-ttl SECS]")
		os.Exit(2)
	}
	if err := run(strings.Split(*endpoints, ","), *name, *mode, *ttl); err != nil {
		fmt.Fprintln(os.Stderr, "rwmutex:", err)
		os.Exit(1)
	}
}

func run(endpoints []string, name, mode string, ttl int) error {
	client, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		return fmt.Errorf("connect to %v: %w", endpoints, err)
	}
	defer client.Close()
	session, err := concurrency.NewSession(client, concurrency.WithTTL(ttl))
	if err != nil {
		return fmt.Errorf("open a session: %w", err)
	}
	defer session.Close()

	// Stdin closing or a signal both mean "let go".
	release := make(chan struct{})
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	go func() {
		select {
		case <-signals:
		case <-stdinClosed:
		}
		close(release)
	}()

	mutex := recipe.NewRWMutex(session, name)
	locked := make(chan error, 1)
	go func() {
		if mode == "read" {
			locked <- mutex.RLock()
		} else {
			locked <- mutex.Lock()
		}
	}()
	select {
	case err := <-locked:
		if err != nil {
			return fmt.Errorf("%s %q: %w", mode, name, err)
		}
	case <-release:
		// Released while waiting: the deferred session.Close revokes the waiting key.
		return nil
	}
	fmt.Println("locked")

	<-release
	if mode == "read" {
		err = mutex.RUnlock()
	} else {
		err = mutex.Unlock()
	}
	if err != nil {
		return fmt.Errorf("unlock %q: %w", name, err)
	}
	fmt.Println("unlocked")
	return nil
}
