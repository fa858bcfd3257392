/* A KServe v2 HTTP responder that does no work: every answer is canned, one thread, epoll.
 * bench/client_bound.sh drives it with perf_analyzer to measure what the load generator alone
 * can reach on this machine, the upper bound for any server measured with it here.
 * It answers exactly what perf_analyzer asks of model `mlp_small` (64 -> 10 FP32, version 1). */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

struct resp { char *data; int len; };
struct conn { char buf[65536]; int len; };

static struct resp json(const char *body) {
  struct resp r;
  r.data = malloc(strlen(body) + 256);
  r.len = sprintf(r.data, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %zu\r\n\r\n%s",
                  strlen(body), body);
  return r;
}

static struct resp infer(void) {
  const char *head = "{\"model_name\":\"mlp_small\",\"model_version\":\"1\",\"outputs\":[{\"datatype\":\"FP32\","
                     "\"name\":\"output\",\"parameters\":{\"binary_data_size\":40},\"shape\":[1,10]}]}";
  struct resp r;
  r.data = calloc(1, strlen(head) + 512);
  r.len = sprintf(r.data, "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                  "inference-header-content-length: %zu\r\ncontent-length: %zu\r\n\r\n%s",
                  strlen(head), strlen(head) + 40, head);
  r.len += 40; /* ten zero floats */
  return r;
}

static int has(const char *req, const char *end, const char *s) {
  const char *p = strstr(req, s);
  return p && p < end;
}

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: %s PORT\n", argv[0]); return 2; }
  struct resp r_infer = infer();
  struct resp r_meta = json("{\"inputs\":[{\"datatype\":\"FP32\",\"name\":\"input\",\"shape\":[-1,64]}],"
                            "\"name\":\"mlp_small\",\"outputs\":[{\"datatype\":\"FP32\",\"name\":\"output\","
                            "\"shape\":[-1,10]}],\"platform\":\"onnxruntime_onnx\",\"versions\":[\"1\"]}");
  struct resp r_config = json("{\"name\":\"mlp_small\",\"platform\":\"onnxruntime_onnx\",\"max_batch_size\":64,"
                              "\"input\":[{\"name\":\"input\",\"data_type\":\"TYPE_FP32\",\"dims\":[64]}],"
                              "\"output\":[{\"name\":\"output\",\"data_type\":\"TYPE_FP32\",\"dims\":[10]}]}");
  struct resp r_stats = json("{\"model_stats\":[{\"name\":\"mlp_small\",\"version\":\"1\",\"last_inference\":0,"
                             "\"inference_count\":0,\"execution_count\":0,\"inference_stats\":{"
                             "\"success\":{\"count\":0,\"ns\":0},\"fail\":{\"count\":0,\"ns\":0},"
                             "\"queue\":{\"count\":0,\"ns\":0},\"compute_input\":{\"count\":0,\"ns\":0},"
                             "\"compute_infer\":{\"count\":0,\"ns\":0},\"compute_output\":{\"count\":0,\"ns\":0},"
                             "\"cache_hit\":{\"count\":0,\"ns\":0},\"cache_miss\":{\"count\":0,\"ns\":0}},"
                             "\"batch_stats\":[]}]}");
  struct resp r_server = json("{\"name\":\"canned\",\"version\":\"0\",\"extensions\":[\"binary_tensor_data\"]}");
  static char ok[] = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
  struct resp r_ok = {ok, sizeof ok - 1};

  int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons(atoi(argv[1]));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1024)) { perror("bind"); return 1; }
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
  epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
  struct conn **conns = calloc(65536, sizeof *conns);
  struct epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == l) {
        int c = accept4(l, NULL, NULL, SOCK_NONBLOCK);
        if (c < 0 || c >= 65536) { if (c >= 0) close(c); continue; }
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conns[c] = calloc(1, sizeof(struct conn));
        struct epoll_event e = {.events = EPOLLIN, .data.fd = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
        continue;
      }
      struct conn *c = conns[fd];
      int got = read(fd, c->buf + c->len, sizeof c->buf - 1 - c->len);
      if (got <= 0) { close(fd); free(c); conns[fd] = NULL; continue; }
      c->len += got;
      c->buf[c->len] = 0;
      for (;;) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!end) break;
        int head = end + 4 - c->buf, body = 0;
        char *cl = strcasestr(c->buf, "\r\ncontent-length:");
        if (cl && cl < end) body = atoi(cl + 17);
        if (c->len < head + body) break;
        struct resp *r = &r_ok;
        if (!strncmp(c->buf, "POST", 4)) r = &r_infer;
        else if (has(c->buf, end, "/config ")) r = &r_config;
        else if (has(c->buf, end, "/stats ")) r = &r_stats;
        else if (!strncmp(c->buf, "GET /v2/models/mlp_small", 24)) r = &r_meta;
        else if (!strncmp(c->buf, "GET /v2 ", 8)) r = &r_server;
        if (write(fd, r->data, r->len) != r->len) break;
        memmove(c->buf, c->buf + head + body, c->len - head - body);
        c->len -= head + body;
        c->buf[c->len] = 0;
      }
    }
  }
}
