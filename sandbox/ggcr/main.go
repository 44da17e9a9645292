// A second registry implementation for the sandbox: go-containerregistry's in-memory
// registry (pkg/registry), optionally behind HTTP Basic auth. The prober's conclusions are
// compared against it and against distribution (tests/integration/test_second_registry.py).
package main

import (
	"crypto/subtle"
	"flag"
	"log"
	"net/http"
	"os"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	user := flag.String("user", "", "Basic auth user (empty: no auth)")
	flag.Parse()
	password := os.Getenv("GGCR_PASSWORD") // not a flag: flags show in ps
	logger := log.New(os.Stderr, "", log.LstdFlags)
	var h http.Handler = registry.New(registry.Logger(logger))
	if *user != "" {
		inner := h
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(*user)) != 1 ||
				subtle.ConstantTimeCompare([]byte(p), []byte(password)) != 1 {
				w.Header().Set("WWW-Authenticate", `Basic realm="ggcr"`)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
				return
			}
			inner.ServeHTTP(w, r)
		})
	}
	logger.Fatal(http.ListenAndServe(*addr, h))
}
