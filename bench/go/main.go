// etcd_bench, Go edition: the same modes and JSON line as locksmith's
// examples/etcd_bench.rs, measuring etcd's own concurrency.Mutex (uncontended, contended,
// distinct), concurrency.Election (failover, observe, observers; election.go) and the
// contrib/recipes RWMutex (rw; rw.go) as the peer.
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go run . -endpoints 127.0.0.1:2379 -mode contended -clients 3 -duration 10
//
// -endpoints takes host:port[,host:port...] or locksmith's etcd://host:port[,host:port...]/[ns]
// (the endpoints are taken from it; the namespace and parameters are not used).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
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
	// The distributions behind the percentiles above, as examples/etcd_bench.rs prints them.
	LatencyUs distribution  `json:"latency_us"`
	HandoffUs *distribution `json:"handoff_us,omitempty"`
	// Contended mode only: the holders' Unlock calls, start to return.
	ReleaseP50us *float64      `json:"release_p50_us,omitempty"`
	ReleaseUs    *distribution `json:"release_us,omitempty"`
	// Election modes (election.go).
	electionFields
	// The rw mode (rw.go).
	rwFields
	Setup string `json:"setup,omitempty"`
}

// A latency distribution in whole microseconds: count, extremes and nearest-rank percentiles.
type distribution struct {
	N     int     `json:"n"`
	Min   float64 `json:"min"`
	P1    float64 `json:"p1"`
	P5    float64 `json:"p5"`
	P10   float64 `json:"p10"`
	P20   float64 `json:"p20"`
	P30   float64 `json:"p30"`
	P40   float64 `json:"p40"`
	P50   float64 `json:"p50"`
	P60   float64 `json:"p60"`
	P70   float64 `json:"p70"`
	P80   float64 `json:"p80"`
	P90   float64 `json:"p90"`
	P95   float64 `json:"p95"`
	P99   float64 `json:"p99"`
	P99_9 float64 `json:"p99.9"`
	Max   float64 `json:"max"`
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1)*p + 0.5)
	return math.Round(float64(sorted[i]) / float64(time.Microsecond))
}

func distributionOf(sorted []time.Duration) distribution {
	at := func(p float64) float64 { return percentile(sorted, p) }
	return distribution{
		N: len(sorted), Min: at(0), P1: at(0.01), P5: at(0.05), P10: at(0.10), P20: at(0.20),
		P30: at(0.30), P40: at(0.40), P50: at(0.50), P60: at(0.60), P70: at(0.70), P80: at(0.80),
		P90: at(0.90), P95: at(0.95), P99: at(0.99), P99_9: at(0.999), Max: at(1),
	}
}

// endpointList reads -endpoints: a comma-separated list, or an etcd:// URL whose authority is one.
func endpointList(value string) []string {
	if rest := strings.TrimPrefix(value, "etcd://"); rest != value {
		value = rest
		if end := strings.IndexAny(value, "/?"); end >= 0 {
			value = value[:end]
		}
	}
	var list []string
	for _, endpoint := range strings.Split(value, ",") {
		if endpoint = strings.TrimSpace(endpoint); endpoint != "" {
			list = append(list, endpoint)
		}
	}
	return list
}

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated etcd endpoints, or etcd://host:port[,host:port]/")
	mode := flag.String("mode", "contended", "uncontended | contended | distinct | failover | observe | observers | rw")
	clients := flag.Int("clients", 3, "concurrent clients, each with its own session")
	duration := flag.Float64("duration", 10, "seconds to run")
	setup := flag.String("setup", "", "what etcd this run measures, copied to the report")
	observers := flag.Int("observers", 1000, "observers mode: observers of one name in this process")
	flag.Parse()
	switch *mode {
	case "failover":
		printReport(runFailover(endpointList(*endpoints), *clients, *duration, *setup))
		return
	case "observe":
		printReport(runObserve(endpointList(*endpoints), *duration, *setup))
		return
	case "observers":
		printReport(runObservers(endpointList(*endpoints), *observers, *duration, *setup))
		return
	case "rw":
		printReport(runRW(endpointList(*endpoints), *clients, *duration, *setup))
		return
	}
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
	var releases []time.Duration
	var wg sync.WaitGroup
	started := time.Now()
	for id := 0; id < *clients; id++ {
		cli, err := clientv3.New(clientv3.Config{Endpoints: endpointList(*endpoints), DialTimeout: 5 * time.Second})
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
			var mine, released []time.Duration
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
				releasing := time.Now()
				if err := m.Unlock(context.Background()); err != nil {
					fmt.Fprintf(os.Stderr, "etcd_bench: unlock: %v\n", err)
					os.Exit(1)
				}
				released = append(released, time.Since(releasing))
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			if *mode == "contended" {
				releases = append(releases, released...)
			}
			mu.Unlock()
		}(slot)
	}
	wg.Wait()
	elapsed := time.Since(started).Seconds()
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	sort.Slice(handoffs, func(i, j int) bool { return handoffs[i] < handoffs[j] })
	sort.Slice(releases, func(i, j int) bool { return releases[i] < releases[j] })
	r := report{
		Impl: "go-concurrency", Mode: *mode, Clients: *clients, Ops: len(latencies),
		OpsPerS: float64(int(float64(len(latencies))/elapsed*10)) / 10,
		P50us:   percentile(latencies, 0.5), P99us: percentile(latencies, 0.99),
		Violations: violations, LatencyUs: distributionOf(latencies), Setup: *setup,
	}
	if len(handoffs) > 0 {
		p50, p99 := percentile(handoffs, 0.5), percentile(handoffs, 0.99)
		r.HandoffP50us, r.HandoffP99us = &p50, &p99
		handoff := distributionOf(handoffs)
		r.HandoffUs = &handoff
	}
	if len(releases) > 0 {
		p50 := percentile(releases, 0.5)
		release := distributionOf(releases)
		r.ReleaseP50us, r.ReleaseUs = &p50, &release
	}
	printReport(r)
}

func printReport(r report) {
	out, err := json.Marshal(r)
	if err != nil {
		fail("cannot print the report", err)
	}
	fmt.Println(string(out))
}

// fail reports a failed step and exits non-zero.
func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "etcd_bench: %s: %v\n", what, err)
	os.Exit(1)
}
