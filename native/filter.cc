// Closing a TCP listener for good without refusing anyone it already took: a
// SYN-drop socket filter, and the length of the accept queue still to drain.

#include "common.h"

#include <linux/filter.h>
#include <netinet/tcp.h>

#include <vector>

namespace ecdysis {
namespace {

// refuseNewConnections(fd): for a TCP listener about to close for good. Attaches
// a socket filter that drops SYN segments (SYN without ACK), so the kernel stops
// completing new handshakes while handshakes already under way still finish.
// A dropped SYN is retransmitted by the client about a second later and then
// meets the closed port: a clean refusal, never a reset of a connection that
// was already carrying a request.
Napi::Value RefuseNewConnections(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  // At filter time skb->data is the TCP header; byte 13 holds the flags.
  struct sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 13),
      BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0x12),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x02, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, 0),
      BPF_STMT(BPF_RET | BPF_K, 0xFFFFFFFF),
  };
  struct sock_fprog program = {static_cast<unsigned short>(sizeof(code) / sizeof(code[0])), code};
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &program, sizeof(program)) < 0) {
    throw SystemError(info.Env(), errno, "setsockopt");
  }
  return info.Env().Undefined();
}

// acceptNewConnections(fd): removes the filter refuseNewConnections attached.
Napi::Value AcceptNewConnections(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  int unused = 0;
  if (setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &unused, sizeof(unused)) < 0) {
    throw SystemError(info.Env(), errno, "setsockopt");
  }
  return info.Env().Undefined();
}

// acceptQueueLength(fd): connections a TCP listener has established that nobody
// has accepted yet (TCP_INFO's tcpi_unacked is the accept backlog for a listener).
Napi::Value AcceptQueueLength(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  struct tcp_info tcp;
  std::memset(&tcp, 0, sizeof(tcp));
  socklen_t len = sizeof(tcp);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &tcp, &len) < 0) throw SystemError(info.Env(), errno, "getsockopt");
  return Napi::Number::New(info.Env(), tcp.tcpi_unacked);
}

// attachReuseportProgram(fd, program): steer a SO_REUSEPORT group. `program`
// is a classic BPF program as a flat array of numbers (code, jt, jf, k per
// instruction); it returns the index of the group's socket that gets the
// connection or datagram (an index past the group's end: the kernel's own
// hash). Attached through any socket of the group, it applies to the group.
Napi::Value AttachReuseportProgram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(env, "program must be an array");
  Napi::Array flat = info[1].As<Napi::Array>();
  uint32_t length = flat.Length();
  if (length == 0 || length % 4 != 0 || length / 4 > BPF_MAXINSNS) throw Napi::RangeError::New(env, "program must hold 1 to 4096 instructions");
  std::vector<struct sock_filter> code(length / 4);
  for (uint32_t i = 0; i < length; i++) {
    Napi::Value value = flat.Get(i);
    if (!value.IsNumber()) throw Napi::TypeError::New(env, "program must hold numbers");
    uint32_t n = value.As<Napi::Number>().Uint32Value();
    struct sock_filter& insn = code[i / 4];
    switch (i % 4) {
      case 0: insn.code = static_cast<uint16_t>(n); break;
      case 1: insn.jt = static_cast<uint8_t>(n); break;
      case 2: insn.jf = static_cast<uint8_t>(n); break;
      default: insn.k = n; break;
    }
  }
  struct sock_fprog program = {static_cast<unsigned short>(code.size()), code.data()};
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &program, sizeof(program)) < 0) {
    throw SystemError(env, errno, "setsockopt");
  }
  return env.Undefined();
}

// setReusePort(fd): SO_REUSEPORT on a socket made without it (an older
// generation's), so that the sockets of a worker group can join it.
Napi::Value SetReusePort(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) throw SystemError(info.Env(), errno, "setsockopt");
  return info.Env().Undefined();
}

}  // namespace

void InitFilter(Napi::Env env, Napi::Object exports) {
  exports.Set("refuseNewConnections", Napi::Function::New(env, RefuseNewConnections, "refuseNewConnections"));
  exports.Set("acceptNewConnections", Napi::Function::New(env, AcceptNewConnections, "acceptNewConnections"));
  exports.Set("attachReuseportProgram", Napi::Function::New(env, AttachReuseportProgram, "attachReuseportProgram"));
  exports.Set("setReusePort", Napi::Function::New(env, SetReusePort, "setReusePort"));
  exports.Set("acceptQueueLength", Napi::Function::New(env, AcceptQueueLength, "acceptQueueLength"));
}

}  // namespace ecdysis
