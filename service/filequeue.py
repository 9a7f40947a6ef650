"""kombu's file transport with messages that appear whole (the embedded broker).

kombu's `filesystem` channel creates a message file under its final name and only then
writes the payload. A consumer polling the folder in between renames the still-empty file
away, fails to decode it and drops the message: the job stays `queued` until the
reconciler sends it again (minutes). Under CPU load about 1% of messages were lost that way
(tests/test_filequeue.py reproduces it). Here a message is written under a name the
consumer ignores and renamed into place, which is atomic within one folder.

Taking a message is a rename within the folder too (kombu moves it to the temp folder, a
copy and a delete when that is another file system), so two workers on one folder never
both get the same message.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.transport.virtual import Empty
from kombu.utils.json import dumps, loads

TRANSPORT = "service.filequeue:Transport"


def is_message_of(name: str, queue: str) -> bool:
    """Whether a file in the queue folder is a whole message of `queue`: kombu names them
    "<ms>_<uuid>.<queue>.msg"; half-written and taken ones start with a dot."""
    return name.partition(".")[2] == f"{queue}.msg"


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: dict, **kwargs: object) -> None:
        # The same name kombu gives ("<ms>_<uuid>.<queue>.msg"): its consumer sorts on it.
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot: kombu only takes names whose part after the first dot is
        # "<queue>.msg", so the half-written file is never picked up.
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb") as f:
                f.write(dumps(payload).encode())
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: str) -> dict:
        if self.store_processed:
            return super()._get(queue)
        for name in sorted(os.listdir(self.data_folder_in)):
            if not is_message_of(name, queue):
                continue
            taken = os.path.join(self.data_folder_in, f".{name}.taken-{uuid.uuid4().hex}")
            try:
                os.rename(os.path.join(self.data_folder_in, name), taken)
            except OSError:
                continue  # another consumer took it first
            try:
                with open(taken, "rb") as f:
                    payload = f.read()
                os.unlink(taken)
            except OSError as exc:
                raise ChannelError(f"Cannot read file {taken!r} from queue.") from exc
            return loads(payload)
        raise Empty()


class Transport(filesystem.Transport):
    Channel = Channel
