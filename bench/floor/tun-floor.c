/*
 * The TUN floor: the least any design that reads a TUN device can do. It opens a TUN with the
 * offloads tunnat asks for (virtio-net header, checksum offload, TSO/USO superpackets), and writes
 * every packet it reads straight back, unchanged: no parsing, no table, no translation. The
 * benchmark routes LAN traffic and its replies through it (bench/load/engines.ts, startFloor),
 * so whatever it reaches is the ceiling of the TUN path itself on this machine.
 *
 *   tun-floor NAME [QUEUES]   one thread per queue (IFF_MULTI_QUEUE when QUEUES > 1);
 *                             prints "ready" once every queue is open, runs until killed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40
#endif

/* A GSO superpacket is at most 64 KiB of IP plus the virtio-net header. */
#define BUF_SIZE (65536 + 64)

static int open_queue(const char *name, int multi) {
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (fd < 0) return -1;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR | (multi ? IFF_MULTI_QUEUE : 0);
  strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    close(fd);
    return -1;
  }
  /* The same offloads as tunnat (src/router/tun-setup.ts), most first, fewer on older kernels. */
  const unsigned base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
  const unsigned tries[] = {base | TUN_F_USO4 | TUN_F_USO6, base, TUN_F_CSUM};
  for (unsigned i = 0; i < sizeof tries / sizeof tries[0]; i++) {
    if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)tries[i]) == 0) break;
  }
  return fd;
}

static void *forward(void *arg) {
  int fd = (int)(long)arg;
  unsigned char *buf = malloc(BUF_SIZE);
  if (buf == NULL) return NULL;
  for (;;) {
    ssize_t n = read(fd, buf, BUF_SIZE);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      perror("tun-floor: read");
      exit(1);
    }
    /* A write that fails (the queue is full, the route went) drops the packet, as a NAT would. */
    if (write(fd, buf, (size_t)n) < 0 && errno != EAGAIN && errno != ENOBUFS && errno != EIO) {
      perror("tun-floor: write");
      exit(1);
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: tun-floor NAME [QUEUES]\n");
    return 2;
  }
  int queues = argc == 3 ? atoi(argv[2]) : 1;
  if (queues < 1 || queues > 64) {
    fprintf(stderr, "tun-floor: QUEUES must be 1..64\n");
    return 2;
  }
  int fds[64];
  for (int i = 0; i < queues; i++) {
    fds[i] = open_queue(argv[1], queues > 1);
    if (fds[i] < 0) {
      fprintf(stderr, "tun-floor: cannot open queue %d of %s: %s\n", i, argv[1], strerror(errno));
      return 1;
    }
  }
  pthread_t threads[64];
  for (int i = 0; i < queues; i++) {
    if (pthread_create(&threads[i], NULL, forward, (void *)(long)fds[i]) != 0) {
      fprintf(stderr, "tun-floor: cannot start thread %d\n", i);
      return 1;
    }
  }
  printf("ready\n");
  fflush(stdout);
  for (int i = 0; i < queues; i++) pthread_join(threads[i], NULL);
  return 0;
}
