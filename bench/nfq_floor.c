/* The floor of the NFQUEUE mechanism for conn_bench.py: a C consumer that accepts every queued packet at
 * once, with the verdict the daemon sends for an undecided flow (the packet's mark with MASK cleared: the
 * firewall's "pending" bit and our decision bits), and does nothing else. Its CPU per new flow, measured
 * under the daemon's own rules, is what the kernel round trip costs (queueing, the netlink copy, the
 * wake-up, recv, the verdict and the reinjection that forwards the packet on) before any classification.
 *
 * usage: nfq_floor QUEUE MASK COPY_RANGE MAXLEN
 * Prints "ready" once bound; exits 0 on SIGTERM/SIGINT with the number of packets it handled.
 * Build: gcc -O2 -Wall -o nfq_floor nfq_floor.c -lnetfilter_queue
 */
#include <arpa/inet.h>
#include <errno.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static volatile sig_atomic_t stop;
static uint32_t mask;
static unsigned long handled;

static void on_signal(int sig) { stop = sig; }

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *data) {
    (void)msg;
    (void)data;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (ph == NULL)
        return 0;
    handled++;
    return nfq_set_verdict2(qh, ntohl(ph->packet_id), NF_ACCEPT, nfq_get_nfmark(nfa) & ~mask, 0, NULL);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s QUEUE MASK COPY_RANGE MAXLEN\n", argv[0]);
        return 2;
    }
    uint16_t qnum = (uint16_t)strtoul(argv[1], NULL, 0);
    mask = (uint32_t)strtoul(argv[2], NULL, 0);
    uint32_t range = (uint32_t)strtoul(argv[3], NULL, 0);
    uint32_t maxlen = (uint32_t)strtoul(argv[4], NULL, 0);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: recv returns EINTR and the loop sees `stop` */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    struct nfq_handle *h = nfq_open();
    if (h == NULL) {
        perror("nfq_open");
        return 1;
    }
    struct nfq_q_handle *qh = nfq_create_queue(h, qnum, on_packet, NULL);
    if (qh == NULL) {
        perror("nfq_create_queue");
        return 1;
    }
    if (nfq_set_mode(qh, NFQNL_COPY_PACKET, range) < 0 || nfq_set_queue_maxlen(qh, maxlen) < 0) {
        perror("nfq_set_mode/maxlen");
        return 1;
    }
    /* the same flags as the daemon: fail-open when full, GSO packets whole */
    uint32_t flags = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO;
    if (nfq_set_queue_flags(qh, flags, flags) < 0)
        perror("nfq_set_queue_flags (continuing)");
    printf("ready: queue %u\n", qnum);
    fflush(stdout);

    char buf[4096 + 512] __attribute__((aligned));
    int fd = nfq_fd(h);
    while (!stop) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n >= 0) {
            nfq_handle_packet(h, buf, (int)n);
            continue;
        }
        if (errno == EINTR || errno == ENOBUFS)
            continue;
        perror("recv");
        break;
    }
    printf("stopping: queue %u: %lu packets handled\n", qnum, handled);
    nfq_destroy_queue(qh);
    nfq_close(h);
    return 0;
}
