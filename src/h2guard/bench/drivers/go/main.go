// Command driver is h2guard bench's Go client: net/http over HTTP/2, used as a service would.
//
// It reads the JSON spec named by its one argument, runs the waves with one shared
// http.Client (a clone of http.DefaultTransport that trusts only the spec's CA), and prints
// one JSON line per request as it completes, then a done line. It never retries by itself:
// whatever net/http does on its own (it replays a request refused with REFUSED_STREAM or sent
// on a connection the server said GOAWAY to, when the body can be replayed) is what bench
// measures. Standard library only, Go 1.19.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"
)

type request struct {
	ID       string `json:"id"`
	Method   string `json:"method"`
	Path     string `json:"path"`
	BodySize *int64 `json:"body_size"`
}

type spec struct {
	URL         string       `json:"url"`
	CAFile      string       `json:"ca_file"`
	Concurrency *int         `json:"concurrency"`
	TimeoutS    *float64     `json:"timeout_s"`
	GapS        *float64     `json:"gap_s"`
	Waves       [][]*request `json:"waves"`
}

// record is one stdout line; pointers are JSON null when unset.
type record struct {
	ID       string  `json:"id"`
	Status   *int    `json:"status"`
	Error    *string `json:"error"`
	Start    float64 `json:"start"`
	End      float64 `json:"end"`
	Bytes    int64   `json:"bytes"`
	Protocol *string `json:"protocol"`
}

type output struct {
	mu  sync.Mutex
	out *os.File
}

// line writes one JSON object and its newline in a single write, so lines never interleave.
func (o *output) line(v any) {
	data, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "driver: cannot encode a record: %v\n", err)
		return
	}
	data = append(data, '\n')
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, err := o.out.Write(data); err != nil {
		fmt.Fprintf(os.Stderr, "driver: cannot write to stdout: %v\n", err)
		os.Exit(1)
	}
}

func now() float64 {
	return float64(time.Now().UnixNano()) / 1e9
}

func badSpec(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bad spec: "+format+"\n", args...)
	os.Exit(2)
}

func loadSpec(path string) *spec {
	data, err := os.ReadFile(path)
	if err != nil {
		badSpec("cannot read %s: %v", path, err)
	}
	var s spec
	if err := json.Unmarshal(data, &s); err != nil {
		badSpec("%s is not a valid spec: %v", path, err)
	}
	if !strings.HasPrefix(s.URL, "https://") || strings.HasSuffix(s.URL, "/") {
		badSpec("url must be an https:// origin without a trailing slash, got %q", s.URL)
	}
	if s.CAFile == "" {
		badSpec("ca_file is missing")
	}
	if s.Concurrency == nil || *s.Concurrency < 1 {
		badSpec("concurrency must be an integer of at least 1")
	}
	if s.TimeoutS == nil || *s.TimeoutS <= 0 {
		badSpec("timeout_s must be a number above 0")
	}
	if s.GapS == nil || *s.GapS < 0 {
		badSpec("gap_s must be a number of at least 0")
	}
	if s.Waves == nil {
		badSpec("waves is missing (a list of lists of requests)")
	}
	for w, wave := range s.Waves {
		for i, r := range wave {
			where := fmt.Sprintf("waves[%d][%d]", w, i)
			switch {
			case r == nil:
				badSpec("%s is not a request object", where)
			case r.ID == "":
				badSpec("%s: id is missing", where)
			case r.Method == "":
				badSpec("%s: method is missing", where)
			case !strings.HasPrefix(r.Path, "/"):
				badSpec("%s: path must start with /, got %q", where, r.Path)
			case r.BodySize == nil || *r.BodySize < 0:
				badSpec("%s: body_size must be an integer of at least 0", where)
			}
		}
	}
	return &s
}

func newClient(s *spec) *http.Client {
	pem, err := os.ReadFile(s.CAFile)
	if err != nil {
		badSpec("cannot read ca_file: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		badSpec("ca_file %s holds no PEM certificate", s.CAFile)
	}
	// What a service does: start from the default transport (its dial, TLS handshake and
	// idle timeouts) and give it the CA and a pool as wide as the concurrency.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{RootCAs: roots}
	transport.ForceAttemptHTTP2 = true
	transport.MaxIdleConnsPerHost = *s.Concurrency
	return &http.Client{
		Transport: transport,
		Timeout:   time.Duration(*s.TimeoutS * float64(time.Second)),
	}
}

func protocolOf(proto string) string {
	switch proto {
	case "HTTP/2.0":
		return "h2"
	case "HTTP/1.1":
		return "http/1.1"
	case "HTTP/1.0":
		return "http/1.0"
	}
	return strings.ToLower(proto)
}

type bodies struct {
	mu     sync.Mutex
	bySize map[int64][]byte
}

// get returns a shared read-only buffer of n bytes ('x' repeated).
func (b *bodies) get(n int64) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if data, ok := b.bySize[n]; ok {
		return data
	}
	data := bytes.Repeat([]byte{'x'}, int(n))
	b.bySize[n] = data
	return data
}

func do(client *http.Client, origin string, r *request, pool *bodies) record {
	rec := record{ID: r.ID, Start: now()}
	fail := func(err error) record {
		text := err.Error()
		rec.Error = &text
		rec.End = now()
		return rec
	}
	var body io.Reader
	if *r.BodySize > 0 {
		body = bytes.NewReader(pool.get(*r.BodySize)) // a bytes.Reader: GetBody is set
	}
	req, err := http.NewRequest(r.Method, origin+r.Path, body)
	if err != nil {
		return fail(err)
	}
	req.Header.Set("x-request-id", r.ID)
	if *r.BodySize > 0 {
		req.Header.Set("content-type", "application/octet-stream")
	}
	resp, err := client.Do(req)
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close()
	status := resp.StatusCode
	rec.Status = &status
	proto := protocolOf(resp.Proto)
	rec.Protocol = &proto
	n, err := io.Copy(io.Discard, resp.Body)
	rec.Bytes = n
	if err != nil {
		return fail(err) // a response whose body broke off: status and error both set
	}
	rec.End = now()
	return rec
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: driver SPEC.json")
		os.Exit(2)
	}
	s := loadSpec(os.Args[1])
	client := newClient(s)
	out := &output{out: os.Stdout}
	pool := &bodies{bySize: map[int64][]byte{}}
	gap := time.Duration(*s.GapS * float64(time.Second))
	for w, wave := range s.Waves {
		next := make(chan *request)
		var wg sync.WaitGroup
		workers := *s.Concurrency
		if workers > len(wave) {
			workers = len(wave)
		}
		for i := 0; i < workers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := range next {
					out.line(do(client, s.URL, r, pool))
				}
			}()
		}
		for _, r := range wave {
			next <- r
		}
		close(next)
		wg.Wait()
		if w < len(s.Waves)-1 && gap > 0 {
			time.Sleep(gap)
		}
	}
	out.line(map[string]any{"done": true, "client": "go", "version": runtime.Version()})
}
