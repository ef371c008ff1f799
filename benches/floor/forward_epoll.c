// Zero-logic TCP forwarder: the floor for any proxy that moves bytes with recv/send + epoll.
// One upstream connection per client connection (connected at accept), bytes copied verbatim
// both ways, no HTTP parsing, no pool, no stats. Not a product: a measuring stick for
// docs/benchmarks.md ("The floor"). Usage: forward_epoll LISTEN_PORT UPSTREAM_PORT (127.0.0.1).
// A send that would block is retried at once (busy), which can only make the floor dearer.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#define MAXFD 65536
static int peer[MAXFD];
static char closed_now[MAXFD];  // closed during this epoll batch: its other events are stale
static int closed_list[2 * 512], nclosed;
static char buf[65536];
int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_PORT\n", argv[0]); return 2; }
  int lport = atoi(argv[1]), uport = atoi(argv[2]);
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(lport)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (bind(ls, (void *)&a, sizeof a) || listen(ls, 4096)) { perror("bind"); return 1; }
  struct sockaddr_in u = a; u.sin_port = htons(uport);
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[512];
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  for (;;) {
    int n = epoll_wait(ep, evs, 512, -1);
    while (nclosed > 0) closed_now[closed_list[--nclosed]] = 0;
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (closed_now[fd]) continue;
      if (fd == ls) {
        int c;
        while ((c = accept4(ls, 0, 0, SOCK_NONBLOCK)) >= 0) {
          int s = socket(AF_INET, SOCK_STREAM, 0);
          if (c >= MAXFD || s < 0 || s >= MAXFD || connect(s, (void *)&u, sizeof u)) {
            close(c); if (s >= 0) close(s); continue;
          }
          fcntl(s, F_SETFL, O_NONBLOCK);
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          peer[c] = s; peer[s] = c;
          ev.data.fd = c; epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
          ev.data.fd = s; epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
        }
        continue;
      }
      ssize_t r = recv(fd, buf, sizeof buf, 0);
      if (r <= 0) {
        if (r < 0 && errno == EAGAIN) continue;
        closed_now[peer[fd]] = closed_now[fd] = 1;
        closed_list[nclosed++] = fd; closed_list[nclosed++] = peer[fd];
        close(peer[fd]); close(fd); continue;
      }
      ssize_t off = 0;
      while (off < r) {
        ssize_t w = send(peer[fd], buf + off, r - off, MSG_NOSIGNAL);
        if (w < 0) { if (errno == EAGAIN) continue; break; }
        off += w;
      }
    }
  }
}
