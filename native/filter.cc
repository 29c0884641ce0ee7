// Closing a TCP listener for good without refusing anyone it already took: a
// SYN-drop socket filter, and the length of the accept queue still to drain.

#include "common.h"

#include <linux/filter.h>
#include <netinet/tcp.h>

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

}  // namespace

void InitFilter(Napi::Env env, Napi::Object exports) {
  exports.Set("refuseNewConnections", Napi::Function::New(env, RefuseNewConnections, "refuseNewConnections"));
  exports.Set("acceptNewConnections", Napi::Function::New(env, AcceptNewConnections, "acceptNewConnections"));
  exports.Set("acceptQueueLength", Napi::Function::New(env, AcceptQueueLength, "acceptQueueLength"));
}

}  // namespace ecdysis
