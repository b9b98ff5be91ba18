package main

// The kubelet API of the lab's nodes: what kube-apiserver calls on a node for
// `kubectl exec` and `kubectl logs`. The API server speaks SPDY (and, where the feature
// gate allows, WebSocket) to kubelets; Kubernetes' own streaming server handles both, so
// the lab serves exec through it instead of re-implementing the protocol.
//
// One process serves every node of a lab: for each node it opens a listener on the
// node's address inside the node's network namespace, so the API server reaches it at
// the node's InternalIP exactly as it reaches a real kubelet. The lab's (Rust) kubelets
// describe each running container in a small JSON file; this server reads those files
// and never decides anything about pods itself.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// containerRecord is what a lab kubelet writes for each container it runs, at
// <pods-dir>/<namespace>/<pod>/<container>.json.
type containerRecord struct {
	UID          string              `json:"uid"`
	Node         string              `json:"node"`
	Running      bool                `json:"running"`
	RestartCount int                 `json:"restart_count"`
	LogDir       string              `json:"log_dir"`
	ArgvPrefix   []string            `json:"argv_prefix"`
	Env          []string            `json:"env"`
	Binaries     map[string][]string `json:"binaries"`
}

type nodeFlags []string

func (n *nodeFlags) String() string     { return strings.Join(*n, " ") }
func (n *nodeFlags) Set(v string) error { *n = append(*n, v); return nil }

type kubeletServer struct {
	podsDir string
}

func runKubeletServer(args []string) int {
	flags := flag.NewFlagSet("kubelet-server", flag.ContinueOnError)
	podsDir := flags.String("pods-dir", "", "where the lab kubelets describe running containers")
	certFile := flags.String("cert-file", "", "serving certificate (valid for every node address)")
	keyFile := flags.String("key-file", "", "serving key")
	clientCA := flags.String("client-ca-file", "", "CA that signs the API server's kubelet client certificate")
	port := flags.Int("port", 10250, "kubelet port")
	var nodes nodeFlags
	flags.Var(&nodes, "node", "NAME,NETNS,IP of a node to serve (repeatable)")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *podsDir == "" || *certFile == "" || *keyFile == "" || *clientCA == "" || len(nodes) == 0 {
		fmt.Fprintln(os.Stderr, "kubelet-server: --pods-dir, --cert-file, --key-file, --client-ca-file and --node are required")
		return 2
	}
	certificate, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubelet-server: loading %s: %v\n", *certFile, err)
		return 1
	}
	caPEM, err := os.ReadFile(*clientCA)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubelet-server: %v\n", err)
		return 1
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		fmt.Fprintf(os.Stderr, "kubelet-server: no certificate in %s\n", *clientCA)
		return 1
	}
	// Only the API server talks to a kubelet here: it must present a certificate from
	// the lab's CA, as with a real kubelet's --client-ca-file.
	tlsConfig := &tls.Config{
		Certificates: []tls.Certificate{certificate},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}
	server := &kubeletServer{podsDir: *podsDir}
	for _, node := range nodes {
		parts := strings.Split(node, ",")
		if len(parts) != 3 {
			fmt.Fprintf(os.Stderr, "kubelet-server: --node %q is not NAME,NETNS,IP\n", node)
			return 2
		}
		name, netns, address := parts[0], parts[1], parts[2]
		listener, err := listenInNetns(netns, net.JoinHostPort(address, strconv.Itoa(*port)))
		if err != nil {
			fmt.Fprintf(os.Stderr, "kubelet-server: node %s: %v\n", name, err)
			return 1
		}
		httpServer := &http.Server{
			Handler:           server.handler(name),
			TLSConfig:         tlsConfig,
			ReadHeaderTimeout: 10 * time.Second,
		}
		go func() {
			if err := httpServer.ServeTLS(listener, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
				fmt.Fprintf(os.Stderr, "kubelet-server: node %s: %v\n", name, err)
			}
		}()
	}
	fmt.Fprintf(os.Stderr, "kubelet-server: serving %d nodes\n", len(nodes))
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
	return 0
}

// listenInNetns opens a TCP listener inside the named network namespace. A socket keeps
// the namespace it was created in, so only the creating thread has to enter it; that
// thread is locked for the duration and returned to the host's namespace afterwards.
// Binding to an address that is not (yet) on an interface is allowed, as a node's
// address disappears while it is powered off and comes back when it boots.
func listenInNetns(netns, address string) (net.Listener, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	original, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, err
	}
	defer original.Close()
	target, err := os.Open(filepath.Join("/run/netns", netns))
	if err != nil {
		return nil, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("entering %s: %w", netns, err)
	}
	listenConfig := net.ListenConfig{
		Control: func(_, _ string, raw syscall.RawConn) error {
			var controlErr error
			err := raw.Control(func(fd uintptr) {
				controlErr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
			})
			if err != nil {
				return err
			}
			return controlErr
		},
	}
	listener, listenErr := listenConfig.Listen(context.Background(), "tcp", address)
	if err := unix.Setns(int(original.Fd()), unix.CLONE_NEWNET); err != nil {
		// This thread is stuck in the node's namespace: never unlock it, so the Go
		// runtime retires it instead of running other goroutines on it.
		runtime.LockOSThread()
		return nil, fmt.Errorf("leaving %s: %w", netns, err)
	}
	return listener, listenErr
}

func (s *kubeletServer) handler(node string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") })
	// The API server calls /exec/{namespace}/{pod}/{container} and, with the pod UID,
	// /exec/{namespace}/{pod}/{uid}/{container}; likewise /run.
	exec := func(w http.ResponseWriter, r *http.Request) { s.serveExec(node, w, r) }
	mux.HandleFunc("/exec/{namespace}/{pod}/{container}", exec)
	mux.HandleFunc("/exec/{namespace}/{pod}/{uid}/{container}", exec)
	mux.HandleFunc("/containerLogs/{namespace}/{pod}/{container}", func(w http.ResponseWriter, r *http.Request) {
		s.serveLogs(node, w, r)
	})
	return mux
}

func (s *kubeletServer) record(node, namespace, pod, container string) (*containerRecord, int, error) {
	for _, part := range []string{namespace, pod, container} {
		if part == "" || strings.ContainsAny(part, "/\x00") || part == "." || part == ".." {
			return nil, http.StatusBadRequest, fmt.Errorf("invalid name %q", part)
		}
	}
	data, err := os.ReadFile(filepath.Join(s.podsDir, namespace, pod, container+".json"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, http.StatusNotFound, fmt.Errorf("container %q in pod %q not found", container, pod)
		}
		return nil, http.StatusInternalServerError, err
	}
	var record containerRecord
	if err := json.Unmarshal(data, &record); err != nil {
		return nil, http.StatusInternalServerError, fmt.Errorf("reading the record of %s/%s/%s: %w", namespace, pod, container, err)
	}
	if record.Node != node {
		return nil, http.StatusNotFound, fmt.Errorf("pod %q does not exist on this node", pod)
	}
	return &record, http.StatusOK, nil
}

func (s *kubeletServer) serveExec(node string, w http.ResponseWriter, r *http.Request) {
	namespace, pod, container := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	record, status, err := s.record(node, namespace, pod, container)
	if err != nil {
		http.Error(w, err.Error(), status)
		return
	}
	if uid := r.PathValue("uid"); uid != "" && uid != record.UID {
		http.Error(w, fmt.Sprintf("pod %q with UID %q not found", pod, uid), http.StatusNotFound)
		return
	}
	if !record.Running {
		// As the kubelet's streaming server answers an exec into a container the runtime
		// no longer has (a pod whose node restarted): 500, not a client error.
		http.Error(w, fmt.Sprintf("container not found (%q)", container), http.StatusInternalServerError)
		return
	}
	options, err := remotecommandserver.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	command := r.URL.Query()["command"]
	if len(command) == 0 {
		http.Error(w, "no command given", http.StatusBadRequest)
		return
	}
	remotecommandserver.ServeExec(w, r, &executor{record: record}, pod, record.UID, container, command,
		options, 4*time.Hour, 30*time.Second, remotecommandserver.SupportedStreamingProtocols)
}

type executor struct {
	record *containerRecord
}

func (e *executor) ExecInContainer(ctx context.Context, _, _, _ string, cmd []string, in io.Reader, out, errOut io.WriteCloser, _ bool, _ <-chan remotecommandserver.TerminalSize, _ time.Duration) error {
	// The image's own binaries (/agnhost, calico-node) are the lab's stand-ins.
	if mapped, found := e.record.Binaries[filepath.Base(cmd[0])]; found {
		cmd = append(append([]string{}, mapped...), cmd[1:]...)
	}
	argv := append(append([]string{}, e.record.ArgvPrefix...), cmd...)
	process := exec.CommandContext(ctx, argv[0], argv[1:]...)
	process.Env = e.record.Env
	process.Stdin = in
	if out != nil {
		process.Stdout = out
	}
	if errOut != nil {
		process.Stderr = errOut
	}
	err := process.Run()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return &utilexec.ExitErrorWrapper{ExitError: exitErr}
	}
	return err
}

func (s *kubeletServer) serveLogs(node string, w http.ResponseWriter, r *http.Request) {
	namespace, pod, container := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	record, status, err := s.record(node, namespace, pod, container)
	if err != nil {
		http.Error(w, err.Error(), status)
		return
	}
	query := r.URL.Query()
	previous := query.Get("previous") == "true"
	var path string
	if previous {
		if record.RestartCount == 0 {
			http.Error(w, fmt.Sprintf("previous terminated container %q in pod %q not found", container, pod), http.StatusBadRequest)
			return
		}
		path = filepath.Join(record.LogDir, fmt.Sprintf("%d.log", record.RestartCount-1))
	} else {
		for n := record.RestartCount; n >= 0; n-- {
			candidate := filepath.Join(record.LogDir, fmt.Sprintf("%d.log", n))
			if _, err := os.Stat(candidate); err == nil {
				path = candidate
				break
			}
		}
		if path == "" {
			http.Error(w, fmt.Sprintf("container %q in pod %q is waiting to start", container, pod), http.StatusBadRequest)
			return
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	if tail, err := strconv.Atoi(query.Get("tailLines")); err == nil && tail >= 0 {
		data = lastLines(data, tail)
	}
	if limit, err := strconv.Atoi(query.Get("limitBytes")); err == nil && limit >= 0 && limit < len(data) {
		data = data[:limit]
	}
	w.Header().Set("Content-Type", "text/plain")
	if _, err := w.Write(data); err != nil || query.Get("follow") != "true" || previous {
		return
	}
	follow(r.Context(), w, path, int64(len(data)))
}

// lastLines keeps the last n lines of data, as the kubelet's tailLines does.
func lastLines(data []byte, n int) []byte {
	if n == 0 {
		return nil
	}
	end := len(data)
	if end > 0 && data[end-1] == '\n' {
		end--
	}
	for i := end - 1; i >= 0; i-- {
		if data[i] == '\n' {
			n--
			if n == 0 {
				return data[i+1:]
			}
		}
	}
	return data
}

// follow streams what is appended to the log until the client goes away.
func follow(ctx context.Context, w http.ResponseWriter, path string, offset int64) {
	file, err := os.Open(path)
	if err != nil {
		return
	}
	defer file.Close()
	if _, err := file.Seek(offset, io.SeekStart); err != nil {
		return
	}
	reader := bufio.NewReader(file)
	flusher, _ := w.(http.Flusher)
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()
	for {
		line, err := reader.ReadBytes('\n')
		if len(line) > 0 {
			if _, werr := w.Write(line); werr != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if err == nil {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}
