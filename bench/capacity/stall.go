package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// runStall opens -count uploads that announce -length bytes of JSON body,
// send the headers and -send bytes of it, and then stop sending for -hold:
// clients on a slow link, or stalled on purpose. It prints ALL_SENT once every
// connection has sent its part (the moment the driver samples the balancer's
// memory), then, after the hold, a JSON line: how many were still open.
func runStall(args []string) error {
	fs := flag.NewFlagSet("stall", flag.ContinueOnError)
	addr := fs.String("addr", "", "host:port of the balancer")
	count := fs.Int("count", 1000, "stalled uploads")
	send := fs.Int("send", 2<<20, "body bytes each sends before stalling")
	length := fs.Int("length", 100<<20, "Content-Length each announces")
	hold := fs.Duration("hold", 15*time.Second, "how long they stall")
	if err := fs.Parse(args); err != nil {
		return err
	}
	head := fmt.Sprintf("POST /v1/chat/completions HTTP/1.1\r\nHost: capacity\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", *length)
	prefix := []byte(`{"model":"capacity","messages":[{"role":"user","content":"`)
	chunk := append(prefix, bytes.Repeat([]byte("x"), *send-len(prefix))...)
	conns := make([]net.Conn, *count)
	errs := 0
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < *count; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			conn, err := net.DialTimeout("tcp", *addr, 30*time.Second)
			if err == nil {
				_, err = conn.Write(append([]byte(head), chunk...))
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs++
				return
			}
			conns[i] = conn
		}(i)
		if i%50 == 49 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	wg.Wait()
	fmt.Println("ALL_SENT")
	os.Stdout.Sync()
	time.Sleep(*hold)
	alive := 0
	probe := make([]byte, 1)
	for _, conn := range conns {
		if conn == nil {
			continue
		}
		conn.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := conn.Read(probe); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				alive++
			}
		}
		conn.Close()
	}
	out, _ := json.Marshal(map[string]int{"count": *count, "connect_errors": errs, "open_after_hold": alive})
	fmt.Println(string(out))
	return nil
}
