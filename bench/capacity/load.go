package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type loadResult struct {
	Streams      int                `json:"streams"`
	Completed    int                `json:"completed"`
	Errors       int                `json:"errors"`
	ErrorSamples []string           `json:"error_samples"`
	PeakOpen     int64              `json:"peak_open"`
	AllOpenAtS   float64            `json:"all_open_at_s"`
	TTFTms       map[string]float64 `json:"ttft_ms"`
	ConnectMs    map[string]float64 `json:"connect_ms"`
	WallS        float64            `json:"wall_s"`
}

func percentiles(values []float64) map[string]float64 {
	out := map[string]float64{}
	if len(values) == 0 {
		return out
	}
	sort.Float64s(values)
	at := func(p float64) float64 { return values[int(p*float64(len(values)-1))] }
	out["p50"], out["p90"], out["p99"], out["max"] = at(0.5), at(0.9), at(0.99), values[len(values)-1]
	return out
}

// runLoad opens -streams streaming chat completions against -url, started
// evenly over -ramp, and reads each to [DONE]. It prints ALL_OPEN when every
// stream has its first chunk and none has ended (the moment the driver
// samples the balancer's memory), then one JSON line with the figures.
func runLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	url := fs.String("url", "", "base URL, e.g. http://127.0.0.1:8080")
	streams := fs.Int("streams", 10000, "concurrent streams")
	ramp := fs.Duration("ramp", 5*time.Second, "time over which streams start")
	timeout := fs.Duration("timeout", 120*time.Second, "bound for one stream")
	if err := fs.Parse(args); err != nil {
		return err
	}
	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: *streams,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	client := &http.Client{Transport: transport, Timeout: *timeout}
	body := []byte(`{"model":"capacity","messages":[{"role":"user","content":"hi"}],"stream":true}`)
	var open, peak, firstSeen int64
	var mu sync.Mutex
	var ttfts, connects []float64
	var errs []string
	completed := 0
	allOpen := make(chan float64, 1)
	start := time.Now()
	var wg sync.WaitGroup
	fail := func(msg string) {
		mu.Lock()
		errs = append(errs, msg)
		mu.Unlock()
	}
	for i := 0; i < *streams; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			time.Sleep(time.Duration(int64(*ramp) * int64(i) / int64(*streams)))
			sent := time.Now()
			req, _ := http.NewRequestWithContext(context.Background(), "POST", *url+"/v1/chat/completions", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				fail(err.Error())
				return
			}
			defer resp.Body.Close()
			headers := time.Since(sent)
			if resp.StatusCode != 200 {
				fail(fmt.Sprintf("status %d", resp.StatusCode))
				return
			}
			reader := bufio.NewReader(resp.Body)
			first, done := false, false
			for {
				line, err := reader.ReadString('\n')
				if strings.HasPrefix(line, "data: ") {
					if !first {
						first = true
						ttft := time.Since(sent)
						now := atomic.AddInt64(&open, 1)
						for {
							old := atomic.LoadInt64(&peak)
							if now <= old || atomic.CompareAndSwapInt64(&peak, old, now) {
								break
							}
						}
						if atomic.AddInt64(&firstSeen, 1) == int64(*streams) && now == int64(*streams) {
							allOpen <- time.Since(start).Seconds()
						}
						mu.Lock()
						ttfts = append(ttfts, float64(ttft.Microseconds())/1000)
						connects = append(connects, float64(headers.Microseconds())/1000)
						mu.Unlock()
					}
					if strings.HasPrefix(line, "data: [DONE]") {
						done = true
					}
				}
				if err != nil {
					break
				}
			}
			if first {
				atomic.AddInt64(&open, -1)
			}
			if !done {
				fail("stream ended before [DONE]")
				return
			}
			mu.Lock()
			completed++
			mu.Unlock()
		}(i)
	}
	allOpenAt := -1.0
	go func() {
		if at, ok := <-allOpen; ok {
			fmt.Println("ALL_OPEN")
			os.Stdout.Sync()
			allOpenAt = at
		}
	}()
	wg.Wait()
	time.Sleep(100 * time.Millisecond)
	samples := errs
	if len(samples) > 5 {
		samples = samples[:5]
	}
	result := loadResult{
		Streams: *streams, Completed: completed, Errors: len(errs), ErrorSamples: samples,
		PeakOpen: peak, AllOpenAtS: allOpenAt, TTFTms: percentiles(ttfts),
		ConnectMs: percentiles(connects), WallS: time.Since(start).Seconds(),
	}
	out, _ := json.Marshal(result)
	fmt.Println(string(out))
	return nil
}
