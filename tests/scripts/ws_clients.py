"""WebSocket clients for the end-to-end tests: python websockets and aiohttp, each against the
fixture's echo route through the ingress. Prints one line per check; exits non-zero on any
mismatch."""

import asyncio
import sys

import aiohttp
import websockets


async def with_websockets(url):
    async with websockets.connect(url, subprotocols=["chat.v1"]) as socket:
        assert socket.subprotocol == "chat.v1", socket.subprotocol
        for i in range(20):
            await socket.send(f"websockets {i}")
            assert await socket.recv() == f"websockets {i}"
        payload = bytes(range(256)) * 4096
        await socket.send(payload)
        assert await socket.recv() == payload
        await socket.close(code=4005, reason="python done")
    print("websockets ok")


async def with_aiohttp(url):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, protocols=("chat.v1",)) as socket:
            await socket.send_str("aiohttp")
            reply = await socket.receive()
            assert reply.data == "aiohttp", reply
            await socket.send_str("close:4006")
            closing = await socket.receive()
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closing
            assert socket.close_code == 4006, socket.close_code
    print("aiohttp ok")


async def main(url):
    await asyncio.wait_for(with_websockets(url), 20)
    await asyncio.wait_for(with_aiohttp(url), 20)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
