// Zero-logic TCP forwarder on io_uring: recv and send as SQEs, submitted in batches
// (one io_uring_enter per loop turn), DEFER_TASKRUN + SINGLE_ISSUER, registered files.
// The floor for a proxy whose socket I/O is io_uring-native. Like forward_epoll.c: one upstream
// connection per client connection, bytes copied verbatim, nothing else. Needs liburing
// (Debian: liburing-dev). Usage: forward_uring LISTEN_PORT UPSTREAM_PORT [FIXED_FILES 0|1].
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#define MAXFD 8192
#define BUFSZ 32768
enum { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3 };
static int peer[MAXFD];
static char *bufs[MAXFD];
static int sendoff[MAXFD], sendlen[MAXFD];
// Bumped when an fd is closed: a completion carrying an older generation belongs to a
// connection that is gone (its fd number may already serve a new one) and is ignored.
static unsigned gen[MAXFD];
static struct io_uring ring;
static int use_fixed;
#define UD(op, fd) (((unsigned long long)gen[fd] << 40) | ((unsigned long long)(op) << 32) | (unsigned)(fd))
static struct io_uring_sqe *sqe_get(void) {
  struct io_uring_sqe *s = io_uring_get_sqe(&ring);
  if (!s) { io_uring_submit(&ring); s = io_uring_get_sqe(&ring); }
  return s;
}
static void q_recv(int fd) {
  struct io_uring_sqe *s = sqe_get();
  io_uring_prep_recv(s, fd, bufs[fd], BUFSZ, 0);
  if (use_fixed) s->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data64(s, UD(OP_RECV, fd));
}
// send the bytes read on `from` to its peer
static void q_send(int from) {
  struct io_uring_sqe *s = sqe_get();
  io_uring_prep_send(s, peer[from], bufs[from] + sendoff[from], sendlen[from] - sendoff[from], MSG_NOSIGNAL);
  if (use_fixed) s->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data64(s, UD(OP_SEND, from));
}
// Ends both sides of a pair: shutdown first, so the peer's pending recv completes (and is
// then ignored as stale) and both ends see a FIN even while the ring still holds the files.
static void close_pair(int fd) {
  int p = peer[fd];
  int fds[2] = {fd, p};
  for (int i = 0; i < 2; i++) {
    shutdown(fds[i], SHUT_RDWR);
    if (use_fixed) { int none = -1; io_uring_register_files_update(&ring, fds[i], &none, 1); }
    gen[fds[i]] = (gen[fds[i]] + 1) & 0xffffff;
    close(fds[i]);
  }
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_PORT [FIXED 0|1]\n", argv[0]); return 2; }
  int lport = atoi(argv[1]), uport = atoi(argv[2]);
  use_fixed = argc > 3 && atoi(argv[3]);
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(lport)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (bind(ls, (void *)&a, sizeof a) || listen(ls, 4096)) { perror("bind"); return 1; }
  struct sockaddr_in u = a; u.sin_port = htons(uport);
  struct io_uring_params p = {0};
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  p.cq_entries = 16384; p.flags |= IORING_SETUP_CQSIZE;
  if (io_uring_queue_init_params(4096, &ring, &p)) { perror("ring"); return 1; }
  if (use_fixed && io_uring_register_files_sparse(&ring, MAXFD)) { perror("files"); return 1; }
  struct io_uring_sqe *s = sqe_get();
  io_uring_prep_multishot_accept(s, ls, 0, 0, 0);
  io_uring_sqe_set_data64(s, UD(OP_ACCEPT, ls));
  for (;;) {
    io_uring_submit_and_wait(&ring, 1);
    struct io_uring_cqe *cqe; unsigned head, n = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      n++;
      int op = (cqe->user_data >> 32) & 0xff, fd = (int)(cqe->user_data & 0xffffffff), res = cqe->res;
      if (op != OP_ACCEPT && (unsigned)(cqe->user_data >> 40) != (gen[fd] & 0xffffff)) continue;
      if (op == OP_ACCEPT) {
        if (!(cqe->flags & IORING_CQE_F_MORE)) {  // the multishot accept ended: re-arm it
          struct io_uring_sqe *a = sqe_get();
          io_uring_prep_multishot_accept(a, ls, 0, 0, 0);
          io_uring_sqe_set_data64(a, UD(OP_ACCEPT, ls));
        }
        if (res < 0) continue;
        if (res >= MAXFD) { close(res); continue; }
        int c = res, su = socket(AF_INET, SOCK_STREAM, 0);
        if (su < 0 || su >= MAXFD || connect(su, (void *)&u, sizeof u)) {
          close(c); if (su >= 0) close(su); continue;
        }
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(su, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        peer[c] = su; peer[su] = c;
        if (!bufs[c]) bufs[c] = malloc(BUFSZ);
        if (!bufs[su]) bufs[su] = malloc(BUFSZ);
        if (use_fixed) {
          int fds[1] = {c}; io_uring_register_files_update(&ring, c, fds, 1);
          fds[0] = su; io_uring_register_files_update(&ring, su, fds, 1);
        }
        q_recv(c); q_recv(su);
      } else if (op == OP_RECV) {
        if (res <= 0) { close_pair(fd); continue; }
        sendoff[fd] = 0; sendlen[fd] = res; q_send(fd);
      } else {
        if (res < 0) { close_pair(fd); continue; }
        sendoff[fd] += res;
        if (sendoff[fd] < sendlen[fd]) q_send(fd); else q_recv(fd);
      }
    }
    io_uring_cq_advance(&ring, n);
  }
}
