/* loadgen: new-connection load generator for bench/conn_bench.py (compiled at bench time with gcc).
 *
 *   loadgen server tcp|udp ADDR PORT http|echo
 *   loadgen client tcp|udp ADDR PORT http|random COUNT SECONDS RATE CONCURRENCY SRC_BASE NSRC [KSTART]
 *
 * client: opens COUNT new connections (TCP) or new sockets (UDP, one datagram each) to ADDR:PORT, at RATE
 * per second (open loop; 0 = as fast as CONCURRENCY connections in flight allow), each from its own source
 * (address SRC_BASE + k % NSRC, port 10000 + (k / NSRC) % 50000 for k = KSTART, KSTART + 1, ...: no 5-tuple
 * is reused within NSRC x 50000 connections; the caller moves KSTART on between runs, because the daemon
 * keeps a flow's decision for its 5-tuple after the connection closed); sends 16 random bytes (random) or one HTTP/1.0 GET (http), reads the reply,
 * closes (the server closes first, so the client keeps no TIME_WAIT). A connection that gets no full reply
 * within 2 s counts as failed. Stops by itself after COUNT connections or SECONDS, whichever is first, and
 * prints one JSON object: counts, elapsed seconds, and the request->reply time percentiles in microseconds.
 * server: single-threaded epoll; echoes the first read (echo) or answers a fixed HTTP response (http), then
 * closes; runs until killed (the bench kills it). Traffic goes only where ADDR points (the lab namespaces).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXEV 1024
#define TIMEOUT_NS 2000000000LL
#define MAXCONC 65536

static const char HTTP_REQ[] = "GET /bench HTTP/1.0\r\nHost: bench.example\r\nUser-Agent: loadgen\r\n\r\n";
static const char HTTP_RESP[] = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
                                "Connection: close\r\n\r\nok";

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint64_t xorshift(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* ------------------------------------------------------------------------------------------------ server */

static int serve(int udp, const char *addr, int port, int http) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) die("address");
    int one = 1;
    int ls = socket(AF_INET, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK, 0);
    if (ls < 0) die("socket");
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (udp) {
        int flags = fcntl(ls, F_GETFL);
        fcntl(ls, F_SETFL, flags & ~O_NONBLOCK);
        int big = 8 << 20;
        setsockopt(ls, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        printf("listening udp\n");
        fflush(stdout);
        char buf[2048];
        for (;;) {
            struct sockaddr_in from;
            socklen_t fl = sizeof from;
            ssize_t n = recvfrom(ls, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
            if (n > 0) sendto(ls, buf, (size_t)n, 0, (struct sockaddr *)&from, fl);
        }
    }
    if (listen(ls, 65535) < 0) die("listen");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("listening tcp\n");
    fflush(stdout);
    struct epoll_event evs[MAXEV];
    char buf[2048];
    for (;;) {
        int n = epoll_wait(ep, evs, MAXEV, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                for (;;) {
                    int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0) break;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r > 0) {
                if (http) {
                    if (write(fd, HTTP_RESP, sizeof HTTP_RESP - 1) < 0) { /* counted by the client */ }
                } else if (write(fd, buf, (size_t)r) < 0) { /* counted by the client */ }
            }
            close(fd); /* closing removes it from the epoll set */
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------ client */

struct conn {
    int fd;        /* -1: free */
    int phase;     /* 0 connecting, 1 waiting for the reply, 2 reply seen, waiting for EOF */
    int64_t start; /* connect() time */
    int64_t sent;  /* request time */
    size_t got;
};

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, long n, double q) {
    if (n == 0) return -1;
    long i = (long)(q * (double)n);
    if (i >= n) i = n - 1;
    return v[i];
}

static int client(int udp, const char *addr, int port, int http, long count, double seconds, double rate,
                  int conc, const char *src_base, int nsrc, uint64_t kstart) {
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, addr, &dst.sin_addr) != 1) die("address");
    struct in_addr base;
    if (inet_pton(AF_INET, src_base, &base) != 1) die("source address");
    if (conc < 1 || conc > MAXCONC || nsrc < 1 || nsrc > 250 || count < 1 || count > 10000000) {
        fprintf(stderr, "loadgen: bounds: concurrency 1..%d, nsrc 1..250, count 1..10M\n", MAXCONC);
        return 2;
    }
    rng ^= (uint64_t)now_ns() * 0x2545F4914F6CDD1DULL;
    struct conn *cs = calloc((size_t)conc, sizeof *cs);
    int *freelist = malloc(sizeof(int) * (size_t)conc);
    double *rtt = malloc(sizeof(double) * (size_t)count);
    if (!cs || !freelist || !rtt) die("malloc");
    int nfree = conc;
    for (int i = 0; i < conc; i++) {
        cs[i].fd = -1;
        freelist[i] = conc - 1 - i;
    }
    int ep = epoll_create1(0);
    long started = 0, ok = 0, failed = 0, timeouts = 0, bind_busy = 0, unfinished = 0, nrtt = 0;
    uint64_t k = kstart; /* source index */
    int64_t t0 = now_ns(), deadline = t0 + (int64_t)(seconds * 1e9);
    int active = 0;
    struct epoll_event evs[MAXEV];
    const size_t want = http ? 1 : 16;
    int64_t last_sweep = t0;

    for (;;) {
        int64_t t = now_ns();
        if (t >= deadline) break;
        if (started >= count && active == 0) break;
        /* start connections: up to what the offered rate allows by now (open loop), within the concurrency */
        long allowed = rate > 0 ? (long)((double)(t - t0) * rate / 1e9) + 1 : count;
        if (allowed > count) allowed = count;
        int burst = 0;
        while (started < allowed && nfree > 0 && burst < 256) {
            int slot = freelist[--nfree];
            struct conn *c = &cs[slot];
            int fd = socket(AF_INET, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK, 0);
            if (fd < 0) {
                freelist[nfree++] = slot;
                break;
            }
            int bound = 0;
            for (int tries = 0; tries < 64; tries++, k++) {
                struct sockaddr_in src = {.sin_family = AF_INET};
                src.sin_addr.s_addr = htonl(ntohl(base.s_addr) + (uint32_t)(k % (uint64_t)nsrc));
                src.sin_port = htons((uint16_t)(10000 + (k / (uint64_t)nsrc) % 50000));
                if (bind(fd, (struct sockaddr *)&src, sizeof src) == 0) {
                    bound = 1;
                    k++;
                    break;
                }
                bind_busy++;
            }
            if (!bound) {
                close(fd);
                freelist[nfree++] = slot;
                failed++;
                started++;
                continue;
            }
            started++;
            burst++;
            c->fd = fd;
            c->got = 0;
            c->start = now_ns();
            int r = connect(fd, (struct sockaddr *)&dst, sizeof dst);
            if (r < 0 && errno != EINPROGRESS) {
                close(fd);
                c->fd = -1;
                freelist[nfree++] = slot;
                failed++;
                continue;
            }
            active++;
            struct epoll_event ev = {.data.u32 = (uint32_t)slot};
            if (udp) {
                unsigned char req[16];
                for (int i = 0; i < 16; i += 8) {
                    uint64_t x = xorshift();
                    memcpy(req + i, &x, 8);
                }
                c->sent = now_ns();
                if (send(fd, req, sizeof req, 0) < 0) { /* the timeout counts it */ }
                c->phase = 1;
                ev.events = EPOLLIN;
            } else {
                c->phase = 0;
                ev.events = EPOLLOUT;
            }
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        }
        /* wait a little: until the next connection is due at the offered rate */
        int wait_ms = 1;
        if (rate <= 0 && nfree == 0) wait_ms = 5;
        int n = epoll_wait(ep, evs, MAXEV, wait_ms);
        for (int i = 0; i < n; i++) {
            int slot = (int)evs[i].data.u32;
            struct conn *c = &cs[slot];
            if (c->fd < 0) continue;
            int done = 0, bad = 0;
            if (c->phase == 0) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) {
                    bad = 1;
                } else {
                    unsigned char req[128];
                    size_t len;
                    if (http) {
                        len = sizeof HTTP_REQ - 1;
                        memcpy(req, HTTP_REQ, len);
                    } else {
                        len = 16;
                        for (int j = 0; j < 16; j += 8) {
                            uint64_t x = xorshift();
                            memcpy(req + j, &x, 8);
                        }
                    }
                    c->sent = now_ns();
                    if (write(c->fd, req, len) != (ssize_t)len) {
                        bad = 1;
                    } else {
                        c->phase = 1;
                        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)slot};
                        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                    }
                }
            } else {
                char buf[2048];
                ssize_t r = read(c->fd, buf, sizeof buf);
                if (r > 0) {
                    if (c->phase == 1) {
                        c->got += (size_t)r;
                        if (c->got >= want) {
                            rtt[nrtt++] = (double)(now_ns() - c->sent) / 1e3;
                            c->phase = 2;
                            if (udp) done = 1;
                        }
                    }
                } else if (r == 0) {
                    if (c->phase == 2) done = 1;
                    else bad = 1;
                } else if (errno != EAGAIN && errno != EINTR) {
                    if (c->phase == 2) done = 1;
                    else bad = 1;
                }
            }
            if (done || bad) {
                close(c->fd);
                c->fd = -1;
                freelist[nfree++] = slot;
                active--;
                if (done) ok++;
                else failed++;
            }
        }
        /* per-connection timeout, swept every 50 ms */
        t = now_ns();
        if (t - last_sweep > 50000000LL) {
            last_sweep = t;
            for (int s = 0; s < conc; s++) {
                struct conn *c = &cs[s];
                if (c->fd >= 0 && t - c->start > TIMEOUT_NS) {
                    struct linger lg = {1, 0};
                    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
                    close(c->fd);
                    c->fd = -1;
                    freelist[nfree++] = s;
                    active--;
                    if (c->phase == 2) ok++; /* the reply was seen; only the close was slow */
                    else timeouts++;
                }
            }
        }
    }
    int64_t t_end = now_ns();
    for (int s = 0; s < conc; s++) {
        if (cs[s].fd >= 0) {
            struct linger lg = {1, 0};
            setsockopt(cs[s].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(cs[s].fd);
            unfinished++;
        }
    }
    qsort(rtt, (size_t)nrtt, sizeof *rtt, cmp_double);
    double elapsed = (double)(t_end - t0) / 1e9;
    printf("{\"proto\": \"%s\", \"payload\": \"%s\", \"offered_rate\": %.0f, \"concurrency\": %d, "
           "\"started\": %ld, \"ok\": %ld, \"failed\": %ld, \"timeouts\": %ld, \"unfinished\": %ld, "
           "\"bind_busy\": %ld, \"elapsed\": %.6f, \"rate\": %.1f, \"replies\": %ld, "
           "\"rtt_p50_us\": %.1f, \"rtt_p90_us\": %.1f, \"rtt_p99_us\": %.1f, \"rtt_max_us\": %.1f, "
           "\"next_k\": %llu}\n",
           udp ? "udp" : "tcp", http ? "http" : "random", rate, conc, started, ok, failed, timeouts, unfinished,
           bind_busy, elapsed, elapsed > 0 ? (double)ok / elapsed : 0.0, nrtt, pct(rtt, nrtt, 0.50),
           pct(rtt, nrtt, 0.90), pct(rtt, nrtt, 0.99), nrtt ? rtt[nrtt - 1] : -1.0, (unsigned long long)k);
    return 0;
}

int main(int argc, char **argv) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) { /* thousands of sockets at once */
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (argc >= 6 && strcmp(argv[1], "server") == 0) {
        return serve(strcmp(argv[2], "udp") == 0, argv[3], atoi(argv[4]), strcmp(argv[5], "http") == 0);
    }
    if (argc >= 12 && strcmp(argv[1], "client") == 0) {
        return client(strcmp(argv[2], "udp") == 0, argv[3], atoi(argv[4]), strcmp(argv[5], "http") == 0,
                      atol(argv[6]), atof(argv[7]), atof(argv[8]), atoi(argv[9]), argv[10], atoi(argv[11]),
                      argc > 12 ? strtoull(argv[12], NULL, 10) : 0);
    }
    fprintf(stderr,
            "usage: loadgen server tcp|udp ADDR PORT http|echo\n"
            "       loadgen client tcp|udp ADDR PORT http|random COUNT SECONDS RATE CONCURRENCY SRC_BASE NSRC "
            "[KSTART]\n");
    return 2;
}
