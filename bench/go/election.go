// The election modes, measuring etcd's own concurrency.Election with the same measurement
// points as examples/etcd_bench.rs:
//
//	failover   N candidates (one session each) campaign on one name; the leader resigns at once
//	           and campaigns again; failover_us: from the leader's Resign call to the next
//	           Campaign returning. latency_us: one Campaign+Resign cycle; resign_us: the Resign call.
//	observe    a leader proclaims v1, v2, ...; an observer in another session (Observe) sees
//	           each before the next is proclaimed; observe_us: from the Proclaim call to the
//	           observer receiving that value. latency_us: the Proclaim call.
//	observers  -observers Observe calls of one name on one session; a leader in another session
//	           proclaims a value per round; latency_us: proclaim -> each observer sees it;
//	           all_seen_us: proclaim -> the last one sees it; the process RSS once all have seen
//	           the first round's value, and etcd's watch stream and watcher gauges (from
//	           /metrics) while they observe.
package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
)

// The fields of the election modes, beside the common ones.
type electionFields struct {
	// failover: from the leader's Resign call to the next Campaign returning.
	FailoverP50us *float64      `json:"failover_p50_us,omitempty"`
	FailoverP99us *float64      `json:"failover_p99_us,omitempty"`
	FailoverUs    *distribution `json:"failover_us,omitempty"`
	// failover: the Resign call, start to return.
	ResignP50us *float64      `json:"resign_p50_us,omitempty"`
	ResignUs    *distribution `json:"resign_us,omitempty"`
	// observe: from the Proclaim call to the observer receiving that value.
	ObserveP50us *float64      `json:"observe_p50_us,omitempty"`
	ObserveP99us *float64      `json:"observe_p99_us,omitempty"`
	ObserveUs    *distribution `json:"observe_us,omitempty"`
	// observers: how many, the time until all had seen a proclamation, and what they cost.
	Observers    *int          `json:"observers,omitempty"`
	AllSeenP50us *float64      `json:"all_seen_p50_us,omitempty"`
	AllSeenP99us *float64      `json:"all_seen_p99_us,omitempty"`
	AllSeenUs    *distribution `json:"all_seen_us,omitempty"`
	RssKib       *int64        `json:"rss_kib,omitempty"`
	HwmKib       *int64        `json:"hwm_kib,omitempty"`
	// etcd's gauges summed over the endpoints, before the observers started and while they ran.
	WatchStreamsBefore *int64 `json:"watch_streams_before,omitempty"`
	WatchersBefore     *int64 `json:"watchers_before,omitempty"`
	WatchStreams       *int64 `json:"watch_streams,omitempty"`
	Watchers           *int64 `json:"watchers,omitempty"`
}

func sortDurations(d []time.Duration) {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
}

// summary sorts d and returns its p50, p99 and distribution, or nils when it is empty.
func summary(d []time.Duration) (*float64, *float64, *distribution) {
	if len(d) == 0 {
		return nil, nil, nil
	}
	sortDurations(d)
	p50, p99, dist := percentile(d, 0.5), percentile(d, 0.99), distributionOf(d)
	return &p50, &p99, &dist
}

// baseReport fills the common fields from the per-operation latencies.
func baseReport(mode string, clients int, latencies []time.Duration, elapsed time.Duration, setup string) report {
	sortDurations(latencies)
	return report{
		Impl: "go-concurrency", Mode: mode, Clients: clients, Ops: len(latencies),
		OpsPerS: float64(int(float64(len(latencies))/elapsed.Seconds()*10)) / 10,
		P50us:   percentile(latencies, 0.5), P99us: percentile(latencies, 0.99),
		LatencyUs: distributionOf(latencies), Setup: setup,
	}
}

// newSession opens a client and a session with the TTL the mutex modes use.
func newSession(endpoints []string) *concurrency.Session {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		fail("connect", err)
	}
	session, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
	if err != nil {
		fail("session", err)
	}
	return session
}

func runFailover(endpoints []string, clients int, seconds float64, setup string) report {
	if clients < 1 {
		clients = 1
	}
	name := fmt.Sprintf("bench-go/%d/failover", os.Getpid())
	ctx := context.Background()
	sessions := make([]*concurrency.Session, clients)
	for id := range sessions {
		sessions[id] = newSession(endpoints)
	}
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	var (
		inside, violations int64
		mu                 sync.Mutex
		lastResign         time.Time
		failovers          []time.Duration
		latencies, resigns []time.Duration
		wg                 sync.WaitGroup
	)
	started := time.Now()
	for id, session := range sessions {
		wg.Add(1)
		go func(id int, session *concurrency.Session) {
			defer wg.Done()
			election := concurrency.NewElection(session, name)
			var mine, resigned []time.Duration
			for round := 0; time.Now().Before(deadline); round++ {
				t0 := time.Now()
				if err := election.Campaign(ctx, fmt.Sprintf("candidate %d round %d", id, round)); err != nil {
					fail("campaign", err)
				}
				elected := time.Now()
				if atomic.AddInt64(&inside, 1) != 1 {
					atomic.AddInt64(&violations, 1)
				}
				atomic.AddInt64(&inside, -1)
				mu.Lock()
				if !lastResign.IsZero() {
					failovers = append(failovers, elected.Sub(lastResign))
				}
				lastResign = time.Now()
				mu.Unlock()
				resigning := time.Now()
				if err := election.Resign(ctx); err != nil {
					fail("resign", err)
				}
				resigned = append(resigned, time.Since(resigning))
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			resigns = append(resigns, resigned...)
			mu.Unlock()
		}(id, session)
	}
	wg.Wait()
	r := baseReport("failover", clients, latencies, time.Since(started), setup)
	r.Violations = violations
	r.FailoverP50us, r.FailoverP99us, r.FailoverUs = summary(failovers)
	r.ResignP50us, _, r.ResignUs = summary(resigns)
	return r
}

// seen is one value an observer received, and when.
type seen struct {
	observer int
	value    string
	at       time.Time
}

// observeInto forwards every value an Observe channel yields to out until ctx ends.
func observeInto(ctx context.Context, observer int, election *concurrency.Election, out chan<- seen) {
	for resp := range election.Observe(ctx) {
		if len(resp.Kvs) == 0 {
			continue
		}
		select {
		case out <- seen{observer, string(resp.Kvs[0].Value), time.Now()}:
		case <-ctx.Done():
			return
		}
	}
}

// waitSeen waits until want observers have reported value; a value that never comes is a
// failure (after a minute). Returns when each of them saw it, in arrival order.
func waitSeen(values <-chan seen, value string, want int) []time.Time {
	timeout := time.After(time.Minute)
	seenBy := make(map[int]bool, want)
	var at []time.Time
	for len(at) < want {
		select {
		case s := <-values:
			if s.value == value && !seenBy[s.observer] {
				seenBy[s.observer] = true
				at = append(at, s.at)
			}
		case <-timeout:
			fail("observe", fmt.Errorf("%d of %d observers saw %q within a minute", len(at), want, value))
		}
	}
	return at
}

// lead opens a session that leads name with value.
func lead(endpoints []string, name, value string) *concurrency.Election {
	election := concurrency.NewElection(newSession(endpoints), name)
	if err := election.Campaign(context.Background(), value); err != nil {
		fail("campaign", err)
	}
	return election
}

func runObserve(endpoints []string, seconds float64, setup string) report {
	name := fmt.Sprintf("bench-go/%d/observe", os.Getpid())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	leader := lead(endpoints, name, "v0")
	values := make(chan seen, 64)
	go observeInto(ctx, 0, concurrency.NewElection(newSession(endpoints), name), values)
	waitSeen(values, "v0", 1)
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	var proclaims, observed []time.Duration
	started := time.Now()
	for i := 1; time.Now().Before(deadline); i++ {
		value := fmt.Sprintf("v%d", i)
		t0 := time.Now()
		if err := leader.Proclaim(ctx, value); err != nil {
			fail("proclaim", err)
		}
		proclaims = append(proclaims, time.Since(t0))
		observed = append(observed, waitSeen(values, value, 1)[0].Sub(t0))
	}
	r := baseReport("observe", 1, proclaims, time.Since(started), setup)
	r.ObserveP50us, r.ObserveP99us, r.ObserveUs = summary(observed)
	return r
}

func runObservers(endpoints []string, observers int, seconds float64, setup string) report {
	name := fmt.Sprintf("bench-go/%d/observers", os.Getpid())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	leader := lead(endpoints, name, "r0")
	session := newSession(endpoints)
	streamsBefore, watchersBefore := watchGauges(endpoints)
	values := make(chan seen, 4*observers)
	for id := 0; id < observers; id++ {
		go observeInto(ctx, id, concurrency.NewElection(session, name), values)
	}
	waitSeen(values, "r0", observers)
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	var each, all []time.Duration
	var rss, hwm *int64
	started := time.Now()
	for round := 1; round == 1 || time.Now().Before(deadline); round++ {
		value := fmt.Sprintf("r%d", round)
		t0 := time.Now()
		if err := leader.Proclaim(ctx, value); err != nil {
			fail("proclaim", err)
		}
		at := waitSeen(values, value, observers)
		for _, when := range at {
			each = append(each, when.Sub(t0))
		}
		all = append(all, at[len(at)-1].Sub(t0))
		if round == 1 {
			// Before the latencies kept (8 bytes per observer per round) count.
			rss, hwm = memoryKib("VmRSS:"), memoryKib("VmHWM:")
		}
	}
	elapsed := time.Since(started)
	streams, watchers := watchGauges(endpoints)
	r := baseReport("observers", 1, each, elapsed, setup)
	r.Ops, r.OpsPerS = len(all), float64(int(float64(len(all))/elapsed.Seconds()*10))/10
	r.Observers = &observers
	r.AllSeenP50us, r.AllSeenP99us, r.AllSeenUs = summary(all)
	r.RssKib, r.HwmKib = rss, hwm
	r.WatchStreamsBefore, r.WatchersBefore, r.WatchStreams, r.Watchers = streamsBefore, watchersBefore, streams, watchers
	return r
}

// memoryKib reads one field of /proc/self/status in KiB (nil where there is none).
func memoryKib(field string) *int64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest := strings.TrimPrefix(line, field); rest != line {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err == nil {
				return &kib
			}
		}
	}
	return nil
}

// watchGauges sums etcd_debugging_mvcc_watch_stream_total and etcd_debugging_mvcc_watcher_total
// over the endpoints' /metrics.
func watchGauges(endpoints []string) (*int64, *int64) {
	var streams, watchers int64
	for _, endpoint := range endpoints {
		if !strings.Contains(endpoint, "://") {
			endpoint = "http://" + endpoint
		}
		resp, err := http.Get(endpoint + "/metrics")
		if err != nil {
			fail("read etcd's metrics", err)
		}
		lines := bufio.NewScanner(resp.Body)
		for lines.Scan() {
			fields := strings.Fields(lines.Text())
			if len(fields) != 2 {
				continue
			}
			value, err := strconv.ParseFloat(fields[1], 64)
			if err != nil {
				continue
			}
			switch fields[0] {
			case "etcd_debugging_mvcc_watch_stream_total":
				streams += int64(value)
			case "etcd_debugging_mvcc_watcher_total":
				watchers += int64(value)
			}
		}
		resp.Body.Close()
	}
	return &streams, &watchers
}
