package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// runStub serves OpenAI-shaped SSE streams: the first chunk after -ttft,
// then one chunk every -interval, -tokens in all, then [DONE]. GET /health
// answers 200, as vLLM's does. Every request body is read whole first, as
// vLLM parses the whole JSON body before it starts.
func runStub(args []string) error {
	fs := flag.NewFlagSet("stub", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	ttft := fs.Duration("ttft", 50*time.Millisecond, "time to the first chunk")
	tokens := fs.Int("tokens", 40, "chunks per stream")
	interval := fs.Duration("interval", 250*time.Millisecond, "time between chunks")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	// The port, for the driver that asked for port 0.
	fmt.Println("LISTENING", ln.Addr().String())
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		flusher, ok := w.(http.Flusher)
		if !ok {
			http.Error(w, "no flusher", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		timer := time.NewTimer(*ttft)
		defer timer.Stop()
		for i := 0; i < *tokens; i++ {
			select {
			case <-r.Context().Done():
				return
			case <-timer.C:
			}
			fmt.Fprintf(w, "data: {\"id\":\"cmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t%d \"}}]}\n\n", i)
			flusher.Flush()
			timer.Reset(*interval)
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
		flusher.Flush()
	})
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second}
	return server.Serve(ln)
}
