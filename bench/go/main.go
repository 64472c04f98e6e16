// etcd_bench, Go edition: the same modes and JSON line as locksmith's
// examples/etcd_bench.rs, measuring etcd's own concurrency.Mutex as the peer.
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go run . -endpoints 127.0.0.1:2379 -mode contended -clients 3 -duration 10
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
)

type report struct {
	Impl       string  `json:"impl"`
	Mode       string  `json:"mode"`
	Clients    int     `json:"clients"`
	Ops        int     `json:"ops"`
	OpsPerS    float64 `json:"ops_per_s"`
	P50us      float64 `json:"p50_us"`
	P99us      float64 `json:"p99_us"`
	Violations int64   `json:"violations"`
	// Contended mode only: from a holder starting its unlock to the next holder's Lock returning.
	HandoffP50us *float64 `json:"handoff_p50_us,omitempty"`
	HandoffP99us *float64 `json:"handoff_p99_us,omitempty"`
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1)*p + 0.5)
	return float64(sorted[i].Microseconds())
}

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated etcd endpoints")
	mode := flag.String("mode", "contended", "uncontended | contended | distinct")
	clients := flag.Int("clients", 3, "concurrent clients, each with its own session")
	duration := flag.Float64("duration", 10, "seconds to run")
	flag.Parse()
	if *mode == "uncontended" {
		*clients = 1
	}
	if *mode != "uncontended" && *mode != "contended" && *mode != "distinct" {
		fmt.Fprintf(os.Stderr, "etcd_bench: unknown mode %q\n", *mode)
		os.Exit(2)
	}

	run := fmt.Sprintf("bench-go/%d", os.Getpid())
	deadline := time.Now().Add(time.Duration(*duration * float64(time.Second)))
	inside := make([]int64, *clients)
	var violations int64
	var mu sync.Mutex
	var latencies []time.Duration
	var handoffMu sync.Mutex
	var lastLeft time.Time
	var handoffs []time.Duration
	var wg sync.WaitGroup
	started := time.Now()
	for id := 0; id < *clients; id++ {
		cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(*endpoints, ","), DialTimeout: 5 * time.Second})
		if err != nil {
			fmt.Fprintf(os.Stderr, "etcd_bench: %v\n", err)
			os.Exit(1)
		}
		session, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
		if err != nil {
			fmt.Fprintf(os.Stderr, "etcd_bench: %v\n", err)
			os.Exit(1)
		}
		slot := 0
		if *mode == "distinct" {
			slot = id
		}
		wg.Add(1)
		go func(slot int) {
			defer wg.Done()
			name := fmt.Sprintf("%s/%d", run, slot)
			var mine []time.Duration
			for time.Now().Before(deadline) {
				m := concurrency.NewMutex(session, name)
				t0 := time.Now()
				if err := m.Lock(context.Background()); err != nil {
					fmt.Fprintf(os.Stderr, "etcd_bench: lock: %v\n", err)
					os.Exit(1)
				}
				entered := time.Now()
				if atomic.AddInt64(&inside[slot], 1) != 1 {
					atomic.AddInt64(&violations, 1)
				}
				atomic.AddInt64(&inside[slot], -1)
				if *mode == "contended" {
					handoffMu.Lock()
					if !lastLeft.IsZero() {
						handoffs = append(handoffs, entered.Sub(lastLeft))
					}
					lastLeft = time.Now()
					handoffMu.Unlock()
				}
				if err := m.Unlock(context.Background()); err != nil {
					fmt.Fprintf(os.Stderr, "etcd_bench: unlock: %v\n", err)
					os.Exit(1)
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			mu.Unlock()
		}(slot)
	}
	wg.Wait()
	elapsed := time.Since(started).Seconds()
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	sort.Slice(handoffs, func(i, j int) bool { return handoffs[i] < handoffs[j] })
	r := report{
		Impl: "go-concurrency", Mode: *mode, Clients: *clients, Ops: len(latencies),
		OpsPerS: float64(int(float64(len(latencies))/elapsed*10)) / 10,
		P50us:   percentile(latencies, 0.5), P99us: percentile(latencies, 0.99),
		Violations: violations,
	}
	if len(handoffs) > 0 {
		p50, p99 := percentile(handoffs, 0.5), percentile(handoffs, 0.99)
		r.HandoffP50us, r.HandoffP99us = &p50, &p99
	}
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}
