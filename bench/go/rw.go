// The rw mode, measuring etcd's reader-writer recipe (contrib/recipes RWMutex) with the same
// measurement points as examples/etcd_bench.rs:
//
//	rw   N clients (one session each) take one name in a loop, 90% of the time with RLock,
//	     10% with Lock (drawn at random per cycle), and release it at once.
//	     writer_handoff_us: from the release that let a waiting writer in (the latest release
//	     started after that writer called Lock) to its Lock returning. latency_us: one
//	     acquire+release cycle; read_us/write_us: the RLock/Lock calls; release_us: the
//	     RUnlock/Unlock calls. violations counts a writer holding beside anyone else (a holder
//	     counts from its RLock/Lock returning to its RUnlock/Unlock call).
//
// There is no semaphore in etcd's Go client or recipes, so no semaphore mode here.
package main

import (
	"fmt"
	"math/rand"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3/concurrency"
	recipe "go.etcd.io/etcd/contrib/recipes"
)

// The fields of the rw mode, beside the common ones.
type rwFields struct {
	Reads              *int          `json:"reads,omitempty"`
	Writes             *int          `json:"writes,omitempty"`
	WriterHandoffP50us *float64      `json:"writer_handoff_p50_us,omitempty"`
	WriterHandoffP99us *float64      `json:"writer_handoff_p99_us,omitempty"`
	WriterHandoffUs    *distribution `json:"writer_handoff_us,omitempty"`
	ReadP50us          *float64      `json:"read_p50_us,omitempty"`
	ReadUs             *distribution `json:"read_us,omitempty"`
	WriteP50us         *float64      `json:"write_p50_us,omitempty"`
	WriteUs            *distribution `json:"write_us,omitempty"`
}

// Percent of the cycles that write.
const writePercent = 10

func runRW(endpoints []string, clients int, seconds float64, setup string) report {
	if clients < 1 {
		clients = 1
	}
	name := fmt.Sprintf("bench-go/%d/rw", os.Getpid())
	sessions := make([]*concurrency.Session, clients)
	for id := range sessions {
		sessions[id] = newSession(endpoints)
	}
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	var (
		readers, writers, violations int64
		mu                           sync.Mutex
		lastRelease                  time.Time
		handoffs                     []time.Duration
		latencies, reads, writes     []time.Duration
		releases                     []time.Duration
		wg                           sync.WaitGroup
	)
	started := time.Now()
	for id, session := range sessions {
		wg.Add(1)
		go func(id int, session *concurrency.Session) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(os.Getpid())*1000 + int64(id)))
			var cycles, myReads, myWrites, released []time.Duration
			for time.Now().Before(deadline) {
				writer := rng.Intn(100) < writePercent
				lock := recipe.NewRWMutex(session, name)
				asked := time.Now()
				var err error
				if writer {
					err = lock.Lock()
				} else {
					err = lock.RLock()
				}
				if err != nil {
					fail("rw lock", err)
				}
				granted := time.Now()
				if writer {
					myWrites = append(myWrites, granted.Sub(asked))
					mu.Lock()
					if lastRelease.After(asked) {
						handoffs = append(handoffs, granted.Sub(lastRelease))
					}
					mu.Unlock()
					if atomic.AddInt64(&writers, 1) != 1 || atomic.LoadInt64(&readers) != 0 {
						atomic.AddInt64(&violations, 1)
					}
				} else {
					myReads = append(myReads, granted.Sub(asked))
					atomic.AddInt64(&readers, 1)
					if atomic.LoadInt64(&writers) != 0 {
						atomic.AddInt64(&violations, 1)
					}
				}
				if writer {
					atomic.AddInt64(&writers, -1)
				} else {
					atomic.AddInt64(&readers, -1)
				}
				mu.Lock()
				lastRelease = time.Now()
				mu.Unlock()
				releasing := time.Now()
				if writer {
					err = lock.Unlock()
				} else {
					err = lock.RUnlock()
				}
				if err != nil {
					fail("rw unlock", err)
				}
				released = append(released, time.Since(releasing))
				cycles = append(cycles, time.Since(asked))
			}
			mu.Lock()
			latencies = append(latencies, cycles...)
			reads = append(reads, myReads...)
			writes = append(writes, myWrites...)
			releases = append(releases, released...)
			mu.Unlock()
		}(id, session)
	}
	wg.Wait()
	r := baseReport("rw", clients, latencies, time.Since(started), setup)
	r.Impl = "go-recipe"
	r.Violations = violations
	readCount, writeCount := len(reads), len(writes)
	r.Reads, r.Writes = &readCount, &writeCount
	r.WriterHandoffP50us, r.WriterHandoffP99us, r.WriterHandoffUs = summary(handoffs)
	r.ReadP50us, _, r.ReadUs = summary(reads)
	r.WriteP50us, _, r.WriteUs = summary(writes)
	r.ReleaseP50us, _, r.ReleaseUs = summary(releases)
	return r
}
