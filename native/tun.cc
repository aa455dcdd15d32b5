// The only C++ in tunnat: open a TUN queue, move packets in batches through caller-owned memory,
// report readiness through libuv, and hand errno back to JavaScript. Policy lives in TypeScript.
//
// Errors thrown to JavaScript carry { errno (positive Linux errno), code ('EBADF'...), syscall }
// and, where known, { path, device }; src/tun/errors.ts turns them into TunError.

#include <napi.h>
#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

// Older uapi headers lack the UDP segmentation offloads (Linux 6.2); the ABI values are fixed.
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40
#endif

// <linux/virtio_net.h> is not valid C++ (a field named `class`); these sizes are virtio ABI:
// struct virtio_net_hdr, and the same followed by num_buffers (VIRTIO_NET_F_MRG_RXBUF).
constexpr int kVnetHdrLen = 10;
constexpr int kVnetHdrMrgRxbufLen = 12;

namespace {

const char kTunPath[] = "/dev/net/tun";

// POSIX names so that JavaScript can switch on err.code the way it does for Node's own errors.
std::string ErrnoCode(int err) {
  switch (err) {
    // libuv has no name for EBADFD, which is what TUN returns once its interface is gone.
    case EBADFD: return "EBADFD";
    default: break;
  }
  char name[64];
  uv_err_name_r(-err, name, sizeof name);
  return name;
}

Napi::Error ErrnoError(napi_env env, int err, const char* syscall, const char* path,
                       const std::string& device) {
  char text[128];
  // GNU strerror_r: thread-safe, returns a pointer that may or may not be `text`.
  const char* reason = strerror_r(err, text, sizeof text);
  std::string code = ErrnoCode(err);
  std::string message = syscall;
  if (path != nullptr) message += std::string(" ") + path;
  if (!device.empty()) message += " (" + device + ")";
  message += ": " + std::string(reason) + " [" + code + "]";

  Napi::Error error = Napi::Error::New(env, message);
  Napi::Object obj = error.Value();
  obj.Set("errno", Napi::Number::New(env, err));
  obj.Set("code", Napi::String::New(env, code));
  obj.Set("syscall", Napi::String::New(env, syscall));
  if (path != nullptr) obj.Set("path", Napi::String::New(env, path));
  if (!device.empty()) obj.Set("device", Napi::String::New(env, device));
  return error;
}

// A Buffer is a Uint8Array, so one check covers both; `data` already includes the byteOffset.
bool GetBytes(napi_env env, const Napi::Value& value, uint8_t** data, size_t* length) {
  napi_typedarray_type type;
  void* ptr = nullptr;
  if (napi_get_typedarray_info(env, value, &type, length, &ptr, nullptr, nullptr) != napi_ok) return false;
  if (type != napi_uint8_array) return false;
  *data = static_cast<uint8_t*>(ptr);
  return true;
}

bool GetU32Array(napi_env env, const Napi::Value& value, uint32_t** data, size_t* length) {
  napi_typedarray_type type;
  void* ptr = nullptr;
  if (napi_get_typedarray_info(env, value, &type, length, &ptr, nullptr, nullptr) != napi_ok) return false;
  if (type != napi_uint32_array) return false;
  *data = static_cast<uint32_t*>(ptr);
  return true;
}

// Integral number in [min, max], else a TypeError (not a number) or RangeError is pending.
bool GetInteger(napi_env env, const Napi::Value& value, double min, double max, const char* what,
                double* out) {
  if (!value.IsNumber()) {
    Napi::TypeError::New(env, std::string(what) + " must be a number").ThrowAsJavaScriptException();
    return false;
  }
  double d = value.As<Napi::Number>().DoubleValue();
  if (!(d >= min && d <= max) || std::floor(d) != d) {
    Napi::RangeError::New(env, std::string(what) + " must be an integer in [" + std::to_string(static_cast<int64_t>(min)) +
                                   ", " + std::to_string(static_cast<int64_t>(max)) + "]")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = d;
  return true;
}

// Errors after which the queue is unusable: writing on is pointless, so the batch stops and throws.
bool IsFatalWriteErrno(int err) {
  return err == EBADF || err == EBADFD || err == EIO || err == ENODEV || err == ENXIO;
}

class Tun;

// The poll handle outlives its Tun when the Tun closes while libuv still owns the handle
// (uv_close completes on a later loop turn), so it carries its own back-pointer that close clears.
struct PollBox {
  uv_poll_t handle;
  Tun* owner;
  // Set only when the environment is shutting down: the close callback must finish the hook.
  napi_async_cleanup_hook_handle pendingHook;
};

class Tun : public Napi::ObjectWrap<Tun> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Tun",
                       {
                           InstanceMethod<&Tun::ReadBatch>("readBatch"),
                           InstanceMethod<&Tun::WriteBatch>("writeBatch"),
                           InstanceMethod<&Tun::StartPoll>("startPoll"),
                           InstanceMethod<&Tun::StopPoll>("stopPoll"),
                           InstanceMethod<&Tun::Close>("close"),
                           InstanceMethod<&Tun::Stats>("stats"),
                           InstanceMethod<&Tun::Preemptions>("preemptions"),
                           InstanceMethod<&Tun::SetOffload>("setOffload"),
                           InstanceMethod<&Tun::SetVnetHdrSize>("setVnetHdrSize"),
                           InstanceMethod<&Tun::SetPersist>("setPersist"),
                           InstanceMethod<&Tun::SetQueue>("setQueue"),
                           InstanceMethod<&Tun::SetSteering>("setSteering"),
                           InstanceAccessor<&Tun::GetName>("name"),
                           InstanceAccessor<&Tun::GetFd>("fd"),
                       });
  }

  // new Tun(name, { multiQueue?, vnetHdr? }): opens a queue on the interface, creating it if needed.
  explicit Tun(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Tun>(info), env_(info.Env()) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) {
      Napi::TypeError::New(env, "name must be a string").ThrowAsJavaScriptException();
      return;
    }
    std::string name = info[0].As<Napi::String>().Utf8Value();
    bool multiQueue = false;
    bool vnetHdr = false;
    int inheritedFd = -1;
    bool dupFd = false;
    if (info.Length() >= 2 && !info[1].IsUndefined()) {
      if (!info[1].IsObject()) {
        Napi::TypeError::New(env, "flags must be an object").ThrowAsJavaScriptException();
        return;
      }
      Napi::Object flags = info[1].As<Napi::Object>();
      multiQueue = flags.Get("multiQueue").ToBoolean().Value();
      vnetHdr = flags.Get("vnetHdr").ToBoolean().Value();
      Napi::Value fdv = flags.Get("fd");
      if (fdv.IsNumber()) inheritedFd = fdv.As<Napi::Number>().Int32Value();
      dupFd = flags.Get("dup").ToBoolean().Value();
    }
    if (inheritedFd >= 0) {
      // { fd }: take over a TUN queue another process opened and handed down (privilege separation:
      // a privileged parent opens the device, an unprivileged child reads and writes it).
      // { fd, dup }: use a copy of a queue the caller keeps open (a data-plane worker's queue, held by the
      // main thread so that the queue and its place among the device's queues outlive a worker that dies).
      // TUNGETIFF proves the fd really is a TUN queue and gives its name.
      int fd = inheritedFd;
      if (dupFd) {
        fd = ::fcntl(inheritedFd, F_DUPFD_CLOEXEC, 0);
        if (fd < 0) {
          ErrnoError(env, errno, "fcntl(F_DUPFD_CLOEXEC)", nullptr, name).ThrowAsJavaScriptException();
          return;
        }
      }
      struct ifreq ifr;
      memset(&ifr, 0, sizeof ifr);
      const char* failed = nullptr;
      int fl = -1;
      if (::ioctl(fd, TUNGETIFF, &ifr) < 0) failed = "ioctl(TUNGETIFF)";
      else if ((fl = ::fcntl(fd, F_GETFL)) < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || ::fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) failed = "fcntl";
      if (failed != nullptr) {
        int err = errno;
        if (dupFd) ::close(fd);
        ErrnoError(env, err, failed, nullptr, name).ThrowAsJavaScriptException();
        return;
      }
      fd_ = fd;
      name_.assign(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
      if (napi_add_async_cleanup_hook(env, OnEnvCleanup, this, &cleanupHook_) != napi_ok) {
        cleanupHook_ = nullptr;
      }
      return;
    }
    // The kernel would silently truncate a long name into another interface's; refuse it the way
    // TUNSETIFF refuses other invalid names, so callers see one error for every bad name.
    if (name.size() >= IFNAMSIZ || name.find('\0') != std::string::npos) {
      ErrnoError(env, EINVAL, "ioctl(TUNSETIFF)", nullptr, name).ThrowAsJavaScriptException();
      return;
    }

    int fd = ::open(kTunPath, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
      ErrnoError(env, errno, "open", kTunPath, name).ThrowAsJavaScriptException();
      return;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    if (multiQueue) ifr.ifr_flags |= IFF_MULTI_QUEUE;
    if (vnetHdr) ifr.ifr_flags |= IFF_VNET_HDR;
    memcpy(ifr.ifr_name, name.data(), name.size());
    if (::ioctl(fd, TUNSETIFF, &ifr) < 0) {
      int err = errno;
      ::close(fd);
      ErrnoError(env, err, "ioctl(TUNSETIFF)", nullptr, name).ThrowAsJavaScriptException();
      return;
    }

    // Nothing may fail after this point: a throwing constructor deletes the instance at once.
    fd_ = fd;
    name_.assign(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
    // Async, because closing the poll handle finishes only on a later loop turn; a worker that
    // exits without close() thus still closes the fd and frees the handle before its loop closes.
    if (napi_add_async_cleanup_hook(env, OnEnvCleanup, this, &cleanupHook_) != napi_ok) {
      cleanupHook_ = nullptr;
    }
  }

  ~Tun() override { CloseNow(/*fromFinalizer=*/true); }

 private:
  // readBatch(buf, slotSize, lens): read until EAGAIN or lens.length packets; packet i at i*slotSize.
  Napi::Value ReadBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint8_t* buf = nullptr;
    size_t bufLength = 0;
    uint32_t* lens = nullptr;
    size_t slots = 0;
    double slotSize = 0;
    if (!GetBytes(env, info[0], &buf, &bufLength)) {
      Napi::TypeError::New(env, "buf must be a Buffer or Uint8Array").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (!GetInteger(env, info[1], 1, 0xffffffff, "slotSize", &slotSize)) return Napi::Value();
    if (!GetU32Array(env, info[2], &lens, &slots)) {
      Napi::TypeError::New(env, "lens must be a Uint32Array").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    const uint64_t slot = static_cast<uint64_t>(slotSize);
    if (slot * slots > bufLength) {
      Napi::RangeError::New(env, "slotSize * lens.length exceeds buf.length").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (fd_ < 0) {
      ErrnoError(env, EBADF, "read", nullptr, name_).ThrowAsJavaScriptException();
      return Napi::Value();
    }

    size_t count = 0;
    while (count < slots) {
      // The kernel returns the packet's full length even when it copied only `slot` bytes;
      // that length is passed on untouched so the caller can see the truncation.
      ssize_t n = ::read(fd_, buf + count * slot, slot);
      if (n < 0) {
        int err = errno;
        if (err == EINTR) continue;
        if (err == EAGAIN || err == EWOULDBLOCK) break;
        // Hand over what was already read; a lasting condition fails again on the next call.
        if (count > 0) break;
        ErrnoError(env, err, "read", nullptr, name_).ThrowAsJavaScriptException();
        return Napi::Value();
      }
      if (n == 0) break;
      lens[count] = static_cast<uint32_t>(n);
      count++;
    }
    readPackets_ += count;
    return Napi::Number::New(env, static_cast<double>(count));
  }

  // writeBatch(buf, offsets, lens, count): returns how many entries were consumed (written, or
  // dropped and counted); entries from the returned index on were not tried because of EAGAIN.
  Napi::Value WriteBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint8_t* buf = nullptr;
    size_t bufLength = 0;
    uint32_t* offsets = nullptr;
    size_t offsetsLength = 0;
    uint32_t* lens = nullptr;
    size_t lensLength = 0;
    double countD = 0;
    if (!GetBytes(env, info[0], &buf, &bufLength)) {
      Napi::TypeError::New(env, "buf must be a Buffer or Uint8Array").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (!GetU32Array(env, info[1], &offsets, &offsetsLength)) {
      Napi::TypeError::New(env, "offsets must be a Uint32Array").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (!GetU32Array(env, info[2], &lens, &lensLength)) {
      Napi::TypeError::New(env, "lens must be a Uint32Array").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    const size_t limit = offsetsLength < lensLength ? offsetsLength : lensLength;
    // The bound is min(offsets.length, lens.length).
    if (!GetInteger(env, info[3], 0, static_cast<double>(limit), "count", &countD)) return Napi::Value();
    if (fd_ < 0) {
      ErrnoError(env, EBADF, "write", nullptr, name_).ThrowAsJavaScriptException();
      return Napi::Value();
    }

    const size_t count = static_cast<size_t>(countD);
    size_t i = 0;
    for (; i < count; i++) {
      const uint64_t offset = offsets[i];
      const uint64_t length = lens[i];
      if (offset + length > bufLength) {
        writeOutOfRange_++;
        continue;
      }
      ssize_t n;
      do {
        n = ::write(fd_, buf + offset, length);
      } while (n < 0 && errno == EINTR);
      if (n >= 0) {
        // TUN takes a packet whole or not at all, so n == length here.
        writePackets_++;
        continue;
      }
      int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) break;
      if (IsFatalWriteErrno(err)) {
        lastWriteErrno_ = err;
        ErrnoError(env, err, "write", nullptr, name_).ThrowAsJavaScriptException();
        return Napi::Value();
      }
      // EINVAL (not IPv4/IPv6), EMSGSIZE, EFAULT, ENOBUFS, ENOMEM: this packet only.
      writeErrors_++;
      lastWriteErrno_ = err;
    }
    return Napi::Number::New(env, static_cast<double>(i));
  }

  // startPoll(cb): call cb() whenever the queue is readable (level-triggered); replaces an earlier cb.
  // Should libuv report an error for the fd, polling stops and cb receives that error once.
  Napi::Value StartPoll(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsFunction()) {
      Napi::TypeError::New(env, "callback must be a function").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (fd_ < 0) {
      ErrnoError(env, EBADF, "poll", nullptr, name_).ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (box_ == nullptr) {
      uv_loop_t* loop = nullptr;
      if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
        Napi::Error::New(env, "no libuv loop for this environment").ThrowAsJavaScriptException();
        return Napi::Value();
      }
      PollBox* box = new PollBox();
      int r = uv_poll_init(loop, &box->handle, fd_);
      if (r != 0) {
        delete box;  // uv_poll_init left nothing registered with the loop
        ErrnoError(env, -r, "uv_poll_init", nullptr, name_).ThrowAsJavaScriptException();
        return Napi::Value();
      }
      box->owner = this;
      box->pendingHook = nullptr;
      box->handle.data = box;
      box_ = box;
    }
    if (asyncContext_ == nullptr &&
        napi_async_init(env, nullptr, Napi::String::New(env, "tunnat:TunReadable"), &asyncContext_) != napi_ok) {
      asyncContext_ = nullptr;
      Napi::Error::New(env, "napi_async_init failed").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    callback_ = Napi::Persistent(info[0].As<Napi::Function>());
    int r = uv_poll_start(&box_->handle, UV_READABLE, OnPoll);
    if (r != 0) {
      ErrnoError(env, -r, "uv_poll_start", nullptr, name_).ThrowAsJavaScriptException();
      StopPolling(false);
      return Napi::Value();
    }
    // An active watcher must keep this object alive, or dropping the last JS reference would
    // silently stop the data plane.
    if (!polling_) {
      Ref();
      polling_ = true;
    }
    return env.Undefined();
  }

  Napi::Value StopPoll(const Napi::CallbackInfo& info) {
    StopPolling(false);
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseNow(false);
    return info.Env().Undefined();
  }

  // preemptions(): how many times the calling thread has been switched out while it still wanted the CPU
  // (getrusage(RUSAGE_THREAD).ru_nivcsw). A busy-poll spin during which this grew shared its core with
  // other work (the LAN's endpoints, the kernel's softirq), which the spin held up: the loop then polls
  // for a shorter window. -1 when the kernel cannot say.
  Napi::Value Preemptions(const Napi::CallbackInfo& info) {
    struct rusage ru;
    if (::getrusage(RUSAGE_THREAD, &ru) < 0) return Napi::Number::New(info.Env(), -1);
    return Napi::Number::New(info.Env(), static_cast<double>(ru.ru_nivcsw));
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    out.Set("readPackets", Napi::Number::New(env, static_cast<double>(readPackets_)));
    out.Set("writePackets", Napi::Number::New(env, static_cast<double>(writePackets_)));
    out.Set("writeErrors", Napi::Number::New(env, static_cast<double>(writeErrors_)));
    out.Set("writeOutOfRange", Napi::Number::New(env, static_cast<double>(writeOutOfRange_)));
    out.Set("lastWriteErrno", Napi::Number::New(env, lastWriteErrno_));
    return out;
  }

  // setOffload(TUN_F_* bits): which offloads the reader accepts; needs the vnet header to be useful.
  Napi::Value SetOffload(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    double flags = 0;
    if (!GetInteger(env, info[0], 0, 0xffffffff, "flags", &flags)) return Napi::Value();
    if (fd_ < 0) {
      ErrnoError(env, EBADF, "ioctl(TUNSETOFFLOAD)", nullptr, name_).ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (::ioctl(fd_, TUNSETOFFLOAD, static_cast<unsigned long>(flags)) < 0) {
      ErrnoError(env, errno, "ioctl(TUNSETOFFLOAD)", nullptr, name_).ThrowAsJavaScriptException();
      return Napi::Value();
    }
    return env.Undefined();
  }

  // setPersist(bool): TUNSETPERSIST. A persistent device outlives the process that holds it: its routes
  // stay, and packets routed into it while nobody reads are dropped (how tunnat fails closed across a
  // restart).
  // TUNSETQUEUE: attach this queue of a multi-queue device, or detach it (the kernel then steers no
  // packets to it, while the fd keeps the device alive).
  Napi::Value SetQueue(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsBoolean()) {
      Napi::TypeError::New(env, "attach must be a boolean").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (fd_ < 0) {
      ErrnoError(env, EBADF, "ioctl(TUNSETQUEUE)", nullptr, name_).ThrowAsJavaScriptException();
      return Napi::Value();
    }
    struct ifreq ifr;
    std::memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = info[0].As<Napi::Boolean>().Value() ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
    if (::ioctl(fd_, TUNSETQUEUE, &ifr) < 0) {
      ErrnoError(env, errno, "ioctl(TUNSETQUEUE)", nullptr, name_).ThrowAsJavaScriptException();
      return Napi::Value();
    }
    return env.Undefined();
  }

  // setSteering(program | null): TUNSETSTEERINGEBPF. `program` is eBPF bytecode (struct bpf_insn, 8
  // bytes each) of a socket-filter program: for every packet routed into the device the kernel runs it and
  // puts the packet on queue (return value % number of attached queues). null detaches the program (the
  // kernel's own flow hashing again). A program the verifier refuses throws with its log in `verifierLog`.
  Napi::Value SetSteering(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ < 0) {
      ErrnoError(env, EBADF, "ioctl(TUNSETSTEERINGEBPF)", nullptr, name_).ThrowAsJavaScriptException();
      return Napi::Value();
    }
    int progFd = -1;
    if (info.Length() >= 1 && !info[0].IsNull() && !info[0].IsUndefined()) {
      uint8_t* code = nullptr;
      size_t codeLength = 0;
      if (!GetBytes(env, info[0], &code, &codeLength) || codeLength == 0 || codeLength % sizeof(struct bpf_insn) != 0) {
        Napi::TypeError::New(env, "program must be a non-empty Buffer of 8-byte instructions").ThrowAsJavaScriptException();
        return Napi::Value();
      }
      union bpf_attr attr;
      std::memset(&attr, 0, sizeof attr);
      attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
      attr.insns = reinterpret_cast<uintptr_t>(code);
      attr.insn_cnt = static_cast<uint32_t>(codeLength / sizeof(struct bpf_insn));
      attr.license = reinterpret_cast<uintptr_t>("GPL");
      progFd = static_cast<int>(::syscall(__NR_bpf, BPF_PROG_LOAD, &attr, sizeof attr));
      if (progFd < 0) {
        // Load it again with the verifier's log, to say why.
        int err = errno;
        std::vector<char> log(1 << 16);
        attr.log_buf = reinterpret_cast<uintptr_t>(log.data());
        attr.log_size = static_cast<uint32_t>(log.size());
        attr.log_level = 1;
        int again = static_cast<int>(::syscall(__NR_bpf, BPF_PROG_LOAD, &attr, sizeof attr));
        if (again >= 0) ::close(again);
        Napi::Error e = ErrnoError(env, err, "bpf(BPF_PROG_LOAD)", nullptr, name_);
        e.Set("verifierLog", Napi::String::New(env, std::string(log.data(), strnlen(log.data(), log.size()))));
        e.ThrowAsJavaScriptException();
        return Napi::Value();
      }
    }
    // The device takes its own reference to the program; this fd only hands it over.
    int rc = ::ioctl(fd_, TUNSETSTEERINGEBPF, &progFd);
    int err = errno;
    if (progFd >= 0) ::close(progFd);
    if (rc < 0) {
      ErrnoError(env, err, "ioctl(TUNSETSTEERINGEBPF)", nullptr, name_).ThrowAsJavaScriptException();
      return Napi::Value();
    }
    return env.Undefined();
  }

  Napi::Value SetPersist(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsBoolean()) {
      Napi::TypeError::New(env, "persist must be a boolean").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (fd_ < 0) {
      ErrnoError(env, EBADF, "ioctl(TUNSETPERSIST)", nullptr, name_).ThrowAsJavaScriptException();
      return Napi::Value();
    }
    unsigned long on = info[0].As<Napi::Boolean>().Value() ? 1 : 0;
    if (::ioctl(fd_, TUNSETPERSIST, on) < 0) {
      ErrnoError(env, errno, "ioctl(TUNSETPERSIST)", nullptr, name_).ThrowAsJavaScriptException();
      return Napi::Value();
    }
    return env.Undefined();
  }

  // setVnetHdrSize(n): 10 (struct virtio_net_hdr) by default, 12 with the mergeable-buffers field.
  Napi::Value SetVnetHdrSize(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    double size = 0;
    if (!GetInteger(env, info[0], -2147483648.0, 2147483647.0, "size", &size)) return Napi::Value();
    if (fd_ < 0) {
      ErrnoError(env, EBADF, "ioctl(TUNSETVNETHDRSZ)", nullptr, name_).ThrowAsJavaScriptException();
      return Napi::Value();
    }
    int value = static_cast<int>(size);
    if (::ioctl(fd_, TUNSETVNETHDRSZ, &value) < 0) {
      ErrnoError(env, errno, "ioctl(TUNSETVNETHDRSZ)", nullptr, name_).ThrowAsJavaScriptException();
      return Napi::Value();
    }
    return env.Undefined();
  }

  Napi::Value GetName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), name_); }

  Napi::Value GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    PollBox* box = static_cast<PollBox*>(handle->data);
    Tun* self = box->owner;
    if (self == nullptr || !self->polling_) return;
    napi_env env = self->env_;
    Napi::HandleScope scope(env);

    napi_value argv[1];
    size_t argc = 0;
    if (status < 0) {
      // The watcher is dead; stop it first so a throwing callback cannot leave it firing.
      uv_poll_stop(&box->handle);
      // libuv reports EPOLLERR as UV_EBADF although the fd is open. A zero-length read asks the
      // driver for the real reason (EBADFD once the interface is deleted) and consumes nothing.
      int err = -status;
      const char* syscall = "poll";
      char probe;
      if (self->fd_ >= 0 && ::read(self->fd_, &probe, 0) < 0 && errno != EAGAIN && errno != EINTR) {
        err = errno;
        syscall = "read";
      }
      argv[0] = ErrnoError(env, err, syscall, nullptr, self->name_).Value();
      argc = 1;
    } else if ((events & UV_READABLE) == 0) {
      return;
    }

    napi_value recv = self->Value();
    napi_value fn = self->callback_.Value();
    napi_value result;
    // MakeCallback (not Call) so async hooks see the turn and nextTick/microtasks run after it.
    napi_status s = napi_make_callback(env, self->asyncContext_, recv, fn, argc, argv, &result);
    if (s == napi_pending_exception) {
      napi_value exception;
      napi_get_and_clear_last_exception(env, &exception);
      napi_fatal_exception(env, exception);
    }
    // The callback may have closed the device (box->owner cleared) or restarted polling.
    if (status < 0 && box->owner != nullptr && box->owner->polling_) box->owner->StopPolling(false);
  }

  // Releases the callback and the self-reference; from a finalizer no N-API refcounting is allowed.
  void StopPolling(bool fromFinalizer) {
    if (box_ != nullptr) uv_poll_stop(&box_->handle);
    if (polling_) {
      polling_ = false;
      if (!fromFinalizer) Unref();
    }
    if (!fromFinalizer) {
      callback_.Reset();
      if (asyncContext_ != nullptr) {
        napi_async_destroy(env_, asyncContext_);
        asyncContext_ = nullptr;
      }
    }
  }

  // Stops polling, starts closing the poll handle and closes the fd; idempotent.
  void CloseNow(bool fromFinalizer) {
    StopPolling(fromFinalizer);
    if (box_ != nullptr) {
      box_->owner = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(&box_->handle), OnPollClosed);
      box_ = nullptr;
    }
    // Safe although the handle is still closing: uv_close has already removed the fd from epoll.
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
    if (cleanupHook_ != nullptr) {
      napi_remove_async_cleanup_hook(cleanupHook_);
      cleanupHook_ = nullptr;
    }
  }

  static void OnPollClosed(uv_handle_t* handle) {
    PollBox* box = static_cast<PollBox*>(handle->data);
    if (box->pendingHook != nullptr) napi_remove_async_cleanup_hook(box->pendingHook);
    delete box;
  }

  // The environment (main thread or worker) is going away with the device still open.
  static void OnEnvCleanup(napi_async_cleanup_hook_handle hook, void* arg) {
    Tun* self = static_cast<Tun*>(arg);
    self->cleanupHook_ = nullptr;  // ours to finish now, not to remove
    PollBox* box = self->box_;
    self->CloseNow(false);
    if (box != nullptr) {
      box->pendingHook = hook;  // finished by OnPollClosed once libuv lets go of the handle
    } else {
      napi_remove_async_cleanup_hook(hook);
    }
  }

  napi_env env_;
  int fd_ = -1;
  std::string name_;
  PollBox* box_ = nullptr;
  bool polling_ = false;
  Napi::FunctionReference callback_;
  napi_async_context asyncContext_ = nullptr;
  napi_async_cleanup_hook_handle cleanupHook_ = nullptr;
  uint64_t readPackets_ = 0;
  uint64_t writePackets_ = 0;
  uint64_t writeErrors_ = 0;
  uint64_t writeOutOfRange_ = 0;
  int lastWriteErrno_ = 0;
};

class TunnatAddon : public Napi::Addon<TunnatAddon> {
 public:
  TunnatAddon(Napi::Env env, Napi::Object exports) {
    Napi::Function tun = Tun::Define(env);
    constructor_ = Napi::Persistent(tun);
    DefineAddon(exports,
                {
                    InstanceMethod<&TunnatAddon::Open>("open", napi_enumerable),
                    InstanceValue("Tun", tun, napi_enumerable),
                    Constant(env, "TUN_F_CSUM", TUN_F_CSUM),
                    Constant(env, "TUN_F_TSO4", TUN_F_TSO4),
                    Constant(env, "TUN_F_TSO6", TUN_F_TSO6),
                    Constant(env, "TUN_F_TSO_ECN", TUN_F_TSO_ECN),
                    Constant(env, "TUN_F_UFO", TUN_F_UFO),
                    Constant(env, "TUN_F_USO4", TUN_F_USO4),
                    Constant(env, "TUN_F_USO6", TUN_F_USO6),
                    Constant(env, "VNET_HDR_LEN", kVnetHdrLen),
                    Constant(env, "VNET_HDR_MRG_RXBUF_LEN", kVnetHdrMrgRxbufLen),
                });
  }

 private:
  static PropertyDescriptor Constant(Napi::Env env, const char* name, double value) {
    return InstanceValue(name, Napi::Number::New(env, value), napi_enumerable);
  }

  // open(name, flags) is `new Tun(name, flags)`; a thrown error propagates as is.
  Napi::Value Open(const Napi::CallbackInfo& info) {
    return constructor_.New({info[0], info[1]});
  }

  Napi::FunctionReference constructor_;
};

}  // namespace

NODE_API_ADDON(TunnatAddon)
