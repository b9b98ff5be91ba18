package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// runEtcd runs one etcd member on loopback, serving clients over TLS with the lab CA.
func runEtcd(args []string) int {
	flags := flag.NewFlagSet("etcd", flag.ContinueOnError)
	dataDir := flags.String("data-dir", "", "where etcd keeps its data")
	clientURL := flags.String("listen-client-url", "https://127.0.0.1:2379", "client URL")
	peerURL := flags.String("listen-peer-url", "http://127.0.0.1:2380", "peer URL (loopback only)")
	certFile := flags.String("cert-file", "", "server certificate")
	keyFile := flags.String("key-file", "", "server key")
	caFile := flags.String("trusted-ca-file", "", "CA that signs client certificates")
	quotaBytes := flags.Int64("quota-backend-bytes", 2<<30, "backend quota")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "etcd: --data-dir is required")
		return 2
	}
	config := embed.NewConfig()
	config.Name = "lab"
	config.Dir = *dataDir
	config.LogLevel = "warn"
	config.QuotaBackendBytes = *quotaBytes
	client, err := url.Parse(*clientURL)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: --listen-client-url: %v\n", err)
		return 2
	}
	peer, err := url.Parse(*peerURL)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: --listen-peer-url: %v\n", err)
		return 2
	}
	config.ListenClientUrls = []url.URL{*client}
	config.AdvertiseClientUrls = []url.URL{*client}
	config.ListenPeerUrls = []url.URL{*peer}
	config.AdvertisePeerUrls = []url.URL{*peer}
	config.InitialCluster = config.Name + "=" + peer.String()
	// Metrics stay on the client port; no separate listener to leak.
	config.ListenMetricsUrls = nil
	if *certFile != "" {
		config.ClientTLSInfo.CertFile = *certFile
		config.ClientTLSInfo.KeyFile = *keyFile
		config.ClientTLSInfo.TrustedCAFile = *caFile
		config.ClientTLSInfo.ClientCertAuth = *caFile != ""
	}
	server, err := embed.StartEtcd(config)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: start: %v\n", err)
		return 1
	}
	defer server.Close()
	select {
	case <-server.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		fmt.Fprintln(os.Stderr, "etcd: not ready within 60 s")
		return 1
	}
	fmt.Fprintln(os.Stderr, "etcd: ready")
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-server.Err():
		fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
		return 1
	case <-signals:
		return 0
	}
}

// runEtcdCompact compacts etcd at its current revision and defragments it, as an
// operator's maintenance or etcd's auto-compaction does. Watches that the API server
// holds on older revisions are cancelled, so its clients see 410 Gone and must relist.
func runEtcdCompact(args []string) int {
	flags := flag.NewFlagSet("etcd-compact", flag.ContinueOnError)
	endpoint := flags.String("endpoint", "https://127.0.0.1:2379", "etcd client URL")
	certFile := flags.String("cert-file", "", "client certificate")
	keyFile := flags.String("key-file", "", "client key")
	caFile := flags.String("trusted-ca-file", "", "CA of the etcd server")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	tlsInfo := transport.TLSInfo{CertFile: *certFile, KeyFile: *keyFile, TrustedCAFile: *caFile}
	tlsConfig, err := tlsInfo.ClientConfig()
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd-compact: TLS: %v\n", err)
		return 1
	}
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{*endpoint}, TLS: tlsConfig, DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd-compact: connecting to %s: %v\n", *endpoint, err)
		return 1
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Any key read returns the store's current revision in its header.
	response, err := client.Get(ctx, "compact-probe", clientv3.WithCountOnly())
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd-compact: reading the revision: %v\n", err)
		return 1
	}
	revision := response.Header.Revision
	if _, err := client.Compact(ctx, revision, clientv3.WithCompactPhysical()); err != nil {
		fmt.Fprintf(os.Stderr, "etcd-compact: compacting at %d: %v\n", revision, err)
		return 1
	}
	fmt.Printf("compacted etcd at revision %d\n", revision)
	return 0
}
