/* A measuring stick for bench/tftp.py --floor, not part of provisioner.
 *
 * The least a TFTP server of provisioner's shape can cost: one process per CPU on the port
 * (SO_REUSEPORT), epoll over one connected socket per transfer, lock-step blocks read with
 * pread. No retransmission, no windowsize, no path checks: it only serves a loss-free
 * benchmark. What it reaches against tftpd-hpa is what the kernel and the clients leave to any
 * server on the machine, so it tells an implementation gap from a machine limit.
 *
 *     tftp_floor ADDR PORT ROOT [PROCESSES]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

struct transfer { int sock, fd, blksize, last; unsigned block; };

static struct transfer *by_fd[1 << 16];

static void send_block(struct transfer *t) {
  static unsigned char buf[65464 + 4];
  ssize_t n = pread(t->fd, buf + 4, t->blksize, (off_t)(t->block - 1) * t->blksize);
  if (n < 0) n = 0;
  t->last = n < t->blksize;
  buf[0] = 0; buf[1] = 3; buf[2] = t->block >> 8; buf[3] = t->block;
  send(t->sock, buf, n + 4, 0);
}

static void finish(int ep, struct transfer *t) {
  epoll_ctl(ep, EPOLL_CTL_DEL, t->sock, NULL);
  by_fd[t->sock] = NULL;
  close(t->sock);
  close(t->fd);
  free(t);
}

static void start(int ep, const struct sockaddr_in *local, const char *root, unsigned char *pkt, ssize_t len,
                  const struct sockaddr_in *peer) {
  if (len < 4 || pkt[1] != 1) return;
  pkt[len] = 0;
  char *p = (char *)pkt + 2, *end = (char *)pkt + len, path[4096];
  snprintf(path, sizeof path, "%s/%s", root, p);
  p += strlen(p) + 1;
  if (p < end) p += strlen(p) + 1;
  int blksize = 512, want_blksize = 0, want_tsize = 0;
  while (p < end) {
    char *key = p;
    p += strlen(p) + 1;
    if (p >= end) break;
    if (!strcasecmp(key, "blksize")) { blksize = atoi(p); want_blksize = 1; }
    if (!strcasecmp(key, "tsize")) want_tsize = 1;
    p += strlen(p) + 1;
  }
  if (blksize < 8 || blksize > 65464) return;
  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in any_port = *local;
  any_port.sin_port = 0;
  if (sock < 0 || sock >= (1 << 16) || bind(sock, (void *)&any_port, sizeof any_port) ||
      connect(sock, (const void *)peer, sizeof *peer)) {
    if (sock >= 0) close(sock);
    return;
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st)) {
    static const unsigned char not_found[] = {0, 5, 0, 1, 'n', 'o', 't', ' ', 'f', 'o', 'u', 'n', 'd', 0};
    send(sock, not_found, sizeof not_found, 0);
    if (fd >= 0) close(fd);
    close(sock);
    return;
  }
  struct transfer *t = calloc(1, sizeof *t);
  *t = (struct transfer){.sock = sock, .fd = fd, .blksize = blksize};
  by_fd[sock] = t;
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = sock};
  epoll_ctl(ep, EPOLL_CTL_ADD, sock, &ev);
  if (want_blksize || want_tsize) {
    char oack[128] = {0, 6};
    int n = 2;
    if (want_blksize) n += sprintf(oack + n, "blksize%c%d", 0, blksize) + 1;
    if (want_tsize) n += sprintf(oack + n, "tsize%c%lld", 0, (long long)st.st_size) + 1;
    send(sock, oack, n, 0);
  } else {
    t->block = 1;
    send_block(t);
  }
}

static void on_ack(int ep, struct transfer *t, const unsigned char *pkt, ssize_t len) {
  if (len < 4 || pkt[1] != 4 || (unsigned)((pkt[2] << 8) | pkt[3]) != (t->block & 0xffff)) return;
  if (t->last) {
    finish(ep, t);
    return;
  }
  t->block++;
  send_block(t);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s ADDR PORT ROOT [PROCESSES]\n", argv[0]);
    return 2;
  }
  struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
  if (inet_pton(AF_INET, argv[1], &local.sin_addr) != 1) return 2;
  int processes = argc > 4 ? atoi(argv[4]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
  for (int i = 1; i < processes; i++)
    if (fork() == 0) break;
  int listener = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (bind(listener, (void *)&local, sizeof local)) {
    perror("bind");
    return 1;
  }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener}, ready[256];
  epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
  unsigned char pkt[2048];
  for (;;) {
    int n = epoll_wait(ep, ready, 256, -1);
    for (int i = 0; i < n; i++) {
      int fd = ready[i].data.fd;
      if (fd == listener) {
        struct sockaddr_in peer;
        socklen_t peer_len = sizeof peer;
        ssize_t len = recvfrom(listener, pkt, sizeof pkt - 1, 0, (void *)&peer, &peer_len);
        start(ep, &local, argv[3], pkt, len, &peer);
      } else if (by_fd[fd]) {
        on_ack(ep, by_fd[fd], pkt, recv(fd, pkt, sizeof pkt, 0));
      }
    }
  }
}
